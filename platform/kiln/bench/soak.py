"""A soak: a fixed request rate for a long time, reported per interval (requests, errors,
p50/p99) beside each replica's memory over the same time, to show drift and leaks.

    sampler = ReplicaSampler(dashboard, every_s=5).start()  # memory of each replica
    result = asyncio.run(generate_load(url, body, rate=100, duration_s=600))
    report = soak_report(result, sampler.stop(), interval_s=60)
    draw_soak(report, "soak.png")

Replica memory is each replica process's RSS, read with psutil on this machine (the bench runs
beside the replicas, as `make bench` does); replicas on other machines are listed without it.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln import plots
from kiln.bench.load import LoadResult, percentiles


def rss_mb(process: Any) -> float:
    return float(process.memory_info().rss) / 2**20


@dataclass
class ReplicaSampler:
    """Every `every_s`, `read(process)` of each running replica on this machine (its memory by
    default): {replica: [(seconds since start, value), ...]}. One pass shares one timestamp."""

    dashboard: str
    every_s: float = 5.0
    read: Callable[[Any], float] = rss_mb
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def start(self) -> "ReplicaSampler":
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            now = time.perf_counter() - self._started
            for replica, process in local_replicas(self.dashboard).items():
                try:
                    value = self.read(process)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # stopped between listing and reading
                self.samples.setdefault(replica, []).append((now, value))
            self._stop.wait(self.every_s)


def local_replicas(dashboard: str) -> dict[str, Any]:
    """Every running replica whose process is on this machine, as a psutil.Process, named
    "app/deployment" and the replica id's last 6 characters."""
    import psutil

    from kiln.serve.control import deploy

    processes = {}
    for app_name, app in deploy.details(dashboard).get("applications", {}).items():
        for name, deployment in app.get("deployments", {}).items():
            for replica in deploy.running_replicas(deployment):
                if not replica.get("pid"):
                    continue
                try:
                    process = psutil.Process(replica["pid"])
                except psutil.NoSuchProcess:
                    continue
                processes[f"{app_name}/{name} {replica['replica_id'][-6:]}"] = process
    return processes


def window(result: LoadResult, from_s: float, to_s: float) -> dict[str, Any]:
    """The requests sent from `from_s` to `to_s`: how many, errors, p50/p99 of the answered."""
    started, statuses = np.array(result.started), np.array(result.statuses)
    inside = (started >= from_s) & (started < to_s)
    return {
        "from_s": float(from_s),
        "requests": int(inside.sum()),
        "errors": int((inside & (statuses != 200)).sum()),
        **percentiles(result.ok_latencies(from_s, to_s), (50, 99), digits=2),
    }


def soak_report(
    result: LoadResult, memory: dict[str, list[tuple[float, float]]], interval_s: float
) -> dict[str, Any]:
    starts = np.arange(0, result.duration_s, interval_s)
    replicas = {
        name: {
            "start_mb": round(points[0][1], 1),
            "end_mb": round(points[-1][1], 1),
            "growth_mb_per_hour": round(growth_per_hour(points), 1),
        }
        for name, points in memory.items()
        if len(points) >= 2
    }
    return {
        "summary": result.summary(),
        "intervals": [window(result, start, start + interval_s) for start in starts],
        "replicas": replicas,
        "memory": memory,
    }


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of memory over time, in MB per hour."""
    seconds, megabytes = np.array(points).T
    return float(np.polyfit(seconds, megabytes, 1)[0] * 3600) if np.ptp(seconds) > 0 else 0.0


def draw_soak(report: dict[str, Any], title: str, path: Path) -> None:
    fig, (latency, memory) = plots.subplots(2, 1, figsize=(9, 7), sharex=True)
    intervals = report["intervals"]
    minutes = [i["from_s"] / 60 for i in intervals]
    for q in ("p50_ms", "p99_ms"):
        latency.plot(minutes, [i[q] for i in intervals], marker="o", label=q.replace("_ms", ""))
    latency.set_ylabel("latency (ms)")
    latency.set_title(title)
    latency.legend()
    latency.grid(alpha=0.3)
    for name, points in report["memory"].items():
        memory.plot([t / 60 for t, _ in points], [mb for _, mb in points], label=name)
    memory.set_xlabel("minutes")
    memory.set_ylabel("replica RSS (MB)")
    memory.legend(fontsize="small")
    memory.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)
