"""The autoscaling settings the serving files ship, chosen from this sweep (one run):

1. Targets. Each deployment starts at one replica and gets a closed-loop load for 50 s, once
   per `target_ongoing_requests`; scaling delays are short here so that targets are compared,
   not delays. Measured: replicas reached and when, and over the last 20 s (steady state)
   req/s, p50/p99 and the CPU cores the replicas burned. digits-cnn under 8 and 32 clients,
   the recommender (cache hits) under 32.
2. Delays. digits-cnn with the shipped target under bursts (20 s of 32 clients, then 20 s of
   2 clients, three times), with short delays against the shipped ones: replicas started and
   stopped, p99 in each burst, replica-seconds held.

Figures go to bench-results/autoscale.json.
"""

import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from kiln.serve.loadgen import body_for, generate_load
from kiln.serve.soak import local_replicas
from tests.benchmarks.bench_recommend import recommender_served
from tests.benchmarks.bench_serve import METADATA, train_model

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "autoscale.json"
TARGETS = (2, 8, 16, 32)
SECONDS, STEADY_FROM = 50.0, 30.0  # most scaling is over by 30 s (reached_s says)
BURST_S, BURSTS = 20.0, 3
# The sweep's delays: short, so that the load shows where each target settles.
QUICK = {"upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2}
DELAYS = {
    "short: up 1 s, down 3 s, look-back 2 s": QUICK,
    "as shipped (serving/digits.yaml)": {},
}


class ReplicaWatch:
    """Every second, the deployment's running replicas and the CPU seconds each has used."""

    def __init__(self, dashboard: str, deployment: str):
        self.dashboard, self.deployment = dashboard, deployment
        self.samples: list[tuple[float, dict[str, float]]] = []  # (seconds, {replica: cpu s})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ReplicaWatch":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter() - self.started
            self.samples.append((now, cpu_seconds(self.dashboard, self.deployment)))
            self._stop.wait(1.0)

    def counts(self) -> list[tuple[float, int]]:
        return [(t, len(replicas)) for t, replicas in self.samples]

    def cores(self, from_s: float) -> float:
        """CPU cores the replicas used on average from `from_s` to the last sample."""
        window = [(t, r) for t, r in self.samples if t >= from_s]
        if len(window) < 2:
            return 0.0
        (start, _), (end, last) = window[0], window[-1]
        first: dict[str, float] = {}  # each replica's CPU seconds when the window first saw it
        for _, replicas in window:
            first = {**replicas, **first}
        return sum(cpu - first[name] for name, cpu in last.items()) / (end - start)


def cpu_seconds(dashboard: str, deployment: str) -> dict[str, float]:
    seconds = {}
    for name, process in local_replicas(dashboard).items():
        if name.startswith(deployment + " "):
            try:
                times = process.cpu_times()
            except Exception:  # the replica stopped between listing and reading
                continue
            seconds[name] = times.user + times.system
    return seconds


def deployment_of(config: dict, app_name: str) -> dict:
    return next(a for a in config["applications"] if a["name"] == app_name)["deployments"][0]


def with_autoscaling(config: dict, app_name: str, shipped: dict, **settings: float) -> None:
    """The app's autoscaling as shipped, starting from one replica, with `settings` changed."""
    deployment = deployment_of(config, app_name)
    deployment["autoscaling_config"] = {**shipped, "initial_replicas": 1, **settings}


def settle_at_one(config: dict, dashboard: str, deployment: str) -> None:
    """Deploy `config` (in place: only autoscaling changed) once one replica runs alone."""
    from kiln.serve import deploy

    deploy.deploy(config, dashboard)
    deploy.wait_until_running(config, dashboard)
    deadline = time.monotonic() + 180
    while len(cpu_seconds(dashboard, deployment)) != 1 and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(2)


def window(result: Any, from_s: float, to_s: float) -> dict:
    started, latency = np.array(result.started), np.array(result.latencies_ms)
    statuses = np.array(result.statuses)
    inside = (started >= from_s) & (started < to_s)
    ok = latency[inside & (statuses == 200)]
    return {
        "rps": round(len(ok) / (to_s - from_s), 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
        "errors": int((inside & (statuses != 200)).sum()),
    }


def sweep_run(
    dashboard: str, deployment: str, url: str | list[str], body: bytes | None, clients: int
) -> dict:
    with ReplicaWatch(dashboard, deployment) as watch:
        result = asyncio.run(
            generate_load(url, body, concurrency=clients, duration_s=SECONDS, warmup_s=0)
        )
    counts = watch.counts()
    most = max(n for _, n in counts)
    return {
        **window(result, STEADY_FROM, SECONDS),
        "replicas": most,
        "reached_s": round(next(t for t, n in counts if n == most), 1),
        "replica_cores": round(watch.cores(STEADY_FROM), 2),
    }


def sweep(config: dict, dashboard: str, app: str, url, body, clients: tuple[int, ...]) -> dict:
    deployment = f"{app}/{deployment_of(config, app)['name']}"
    shipped = dict(deployment_of(config, app)["autoscaling_config"])
    results = {}
    for c in clients:
        for target in TARGETS:
            with_autoscaling(config, app, shipped, target_ongoing_requests=target, **QUICK)
            settle_at_one(config, dashboard, deployment)
            results[f"c={c}, target {target}"] = sweep_run(dashboard, deployment, url, body, c)
            print(f"{app} c={c} target {target}: {results[f'c={c}, target {target}']}")
    return results


def bursts(dashboard: str, deployment: str, url: str, body: bytes) -> dict:
    """BURSTS times: BURST_S of 32 clients then BURST_S of 2."""
    with ReplicaWatch(dashboard, deployment) as watch:
        burst_p99 = []
        for _ in range(BURSTS):
            for clients in (32, 2):
                result = asyncio.run(
                    generate_load(url, body, concurrency=clients, duration_s=BURST_S, warmup_s=0)
                )
                if clients == 32:
                    burst_p99.append(result.summary()["p99_ms"])
    counts = watch.counts()
    seen = [set(r) for _, r in watch.samples]
    started = len(set().union(*seen) - seen[0])
    stopped = len(set().union(*seen) - seen[-1])
    held = sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(counts, counts[1:], strict=False))
    return {
        "burst_p99_ms": burst_p99,
        "replicas_started": started,
        "replicas_stopped": stopped,
        "replica_seconds": round(held),
        "replicas_over_time": counts,
    }


def digits(results: dict) -> None:
    import ray

    from kiln.serve import deploy
    from tests.conftest import free_port

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # as `kiln serve` starts Ray
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-autoscale-")
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        train_model()
        port = free_port()
        config = deploy.load_config(ROOT / "serving/digits.yaml", port=port, only=["digits-cnn"])
        shipped = dict(deployment_of(config, "digits-cnn")["autoscaling_config"])
        dashboard = "http://" + ray._private.worker.get_dashboard_url()
        url = f"http://127.0.0.1:{port}/v2/models/digits-cnn/infer"
        body = body_for(METADATA)
        results["digits-cnn targets"] = sweep(config, dashboard, "digits-cnn", url, body, (8, 32))
        deployment = "digits-cnn/ModelDeployment"
        results["digits-cnn delays"] = {}
        for name, delays in DELAYS.items():
            with_autoscaling(config, "digits-cnn", shipped, **delays)
            settle_at_one(config, dashboard, deployment)
            results["digits-cnn delays"][name] = bursts(dashboard, deployment, url, body)
            print(name, {k: v for k, v in results["digits-cnn delays"][name].items()})
        deploy.shutdown(dashboard)
    finally:
        ray.shutdown()


def recommender(results: dict) -> None:
    with recommender_served(["train.epochs=2"], one_replica=False) as (config, dashboard, port, _):
        base = f"http://127.0.0.1:{port}/v1/recommend"
        urls = [f"{base}/{u}?k=10" for u in range(1, 1001)]
        for url in urls:  # every user's vector cached: the sweep measures hits
            httpx.get(url, timeout=30).raise_for_status()
        results["recommender targets"] = sweep(config, dashboard, "recommend", urls, None, (32,))


def main() -> None:
    results: dict = {}
    digits(results)
    recommender(results)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict) -> None:
    console = Console(width=120)
    for name in ("digits-cnn targets", "recommender targets"):
        table = Table(
            "load",
            "replicas",
            "reached s",
            "req/s",
            "p50 ms",
            "p99 ms",
            "replica cores",
            "errors",
            title=f"{name}: last {SECONDS - STEADY_FROM:g} s of {SECONDS:g} s",
        )
        for load, f in results[name].items():
            row = (f["replicas"], f["reached_s"], f["rps"], f["p50_ms"], f["p99_ms"])
            table.add_row(load, *map(str, row), str(f["replica_cores"]), str(f["errors"]))
        console.print(table)
    table = Table(
        "delays",
        "p99 ms per burst",
        "replicas started",
        "stopped",
        "replica-seconds",
        title=f"digits-cnn, {BURSTS} x ({BURST_S:g} s of 32 clients, {BURST_S:g} s of 2)",
    )
    for name, f in results["digits-cnn delays"].items():
        p99 = ", ".join(f"{p:.0f}" for p in f["burst_p99_ms"])
        table.add_row(
            name,
            p99,
            *map(str, (f[k] for k in ("replicas_started", "replicas_stopped", "replica_seconds"))),
        )
    console.print(table)
    print(f"figures: {OUT}")


if __name__ == "__main__":
    main()
