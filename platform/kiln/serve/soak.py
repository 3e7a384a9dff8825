"""A soak: a fixed request rate for a long time, reported per interval (requests, errors,
p50/p99) beside each replica's memory over the same time, to show drift and leaks.

    sampler = MemorySampler(dashboard, every_s=5).start()
    result = asyncio.run(generate_load(url, body, rate=100, duration_s=600))
    report = soak_report(result, sampler.stop(), interval_s=60)
    draw_soak(report, "soak.png")

Replica memory is each replica process's RSS, read with psutil on this machine (the bench runs
beside the replicas, as `make bench` does); replicas on other machines are listed without it.
"""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.serve.loadgen import LoadResult


@dataclass
class MemorySampler:
    dashboard: str
    every_s: float = 5.0
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # MB over time

    def start(self) -> "MemorySampler":
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
        while not self._stop.is_set():
            now = time.perf_counter() - self._started
            for replica, megabytes in replica_memory(self.dashboard).items():
                self.samples.setdefault(replica, []).append((now, megabytes))
            self._stop.wait(self.every_s)


def replica_memory(dashboard: str) -> dict[str, float]:
    """RSS in MB of every running replica whose process is on this machine."""
    import psutil

    memory = {}
    for name, process in local_replicas(dashboard).items():
        try:
            memory[name] = process.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return memory


def local_replicas(dashboard: str) -> dict[str, Any]:
    """Every running replica whose process is on this machine, as a psutil.Process, named
    "app/deployment" and the replica id's last 6 characters."""
    import psutil

    from kiln.serve import deploy

    processes = {}
    for app_name, app in deploy.details(dashboard).get("applications", {}).items():
        for name, deployment in app.get("deployments", {}).items():
            for replica in deployment.get("replicas", []):
                if replica.get("state") != "RUNNING" or not replica.get("pid"):
                    continue
                try:
                    process = psutil.Process(replica["pid"])
                except psutil.NoSuchProcess:
                    continue
                processes[f"{app_name}/{name} {replica['replica_id'][-6:]}"] = process
    return processes


def soak_report(
    result: LoadResult, memory: dict[str, list[tuple[float, float]]], interval_s: float
) -> dict[str, Any]:
    started, latency = np.array(result.started), np.array(result.latencies_ms)
    statuses = np.array(result.statuses)
    intervals = []
    for start in np.arange(0, result.duration_s, interval_s):
        inside = (started >= start) & (started < start + interval_s)
        ok = latency[inside & (statuses == 200)]
        intervals.append(
            {
                "from_s": float(start),
                "requests": int(inside.sum()),
                "errors": int((inside & (statuses != 200)).sum()),
                "p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
            }
        )
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
        "intervals": intervals,
        "replicas": replicas,
        "memory": memory,
    }


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of memory over time, in MB per hour."""
    seconds, megabytes = np.array(points).T
    return float(np.polyfit(seconds, megabytes, 1)[0] * 3600) if np.ptp(seconds) > 0 else 0.0


def draw_soak(report: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, memory) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
