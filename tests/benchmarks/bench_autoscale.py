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
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from kiln.bench.load import body_for, generate_load
from kiln.bench.soak import ReplicaSampler, window
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


Trace = dict[str, list[tuple[float, float]]]  # replica: [(seconds, CPU seconds used), ...]


@contextlib.contextmanager
def cpu_trace(dashboard: str, deployment: str) -> Iterator[Trace]:
    """Every second until the block ends: the CPU seconds of each of the deployment's replicas."""
    sampler = ReplicaSampler(dashboard, every_s=1.0, read=cpu_seconds).start()
    trace: Trace = {}
    try:
        yield trace
    finally:
        trace.update({n: s for n, s in sampler.stop().items() if n.startswith(deployment + " ")})


def cpu_seconds(process) -> float:
    """A replica's CPU time so far (the sampler's reading for this sweep)."""
    times = process.cpu_times()
    return float(times.user + times.system)


def counts(trace: Trace) -> list[tuple[float, int]]:
    """(seconds, running replicas) at each sampling pass."""
    return sorted(Counter(t for series in trace.values() for t, _ in series).items())


def cores(trace: Trace, from_s: float) -> float:
    """CPU cores the replicas used on average from `from_s` to the last sample."""
    inside = [[(t, cpu) for t, cpu in series if t >= from_s] for series in trace.values()]
    times = [t for series in inside for t, _ in series]
    if not times or max(times) == min(times):
        return 0.0
    used = sum(series[-1][1] - series[0][1] for series in inside if series)
    return used / (max(times) - min(times))


def deployment_of(config: dict, app_name: str) -> dict:
    return next(a for a in config["applications"] if a["name"] == app_name)["deployments"][0]


def with_autoscaling(config: dict, app_name: str, shipped: dict, **settings: float) -> None:
    """The app's autoscaling as shipped, starting from one replica, with `settings` changed."""
    deployment = deployment_of(config, app_name)
    deployment["autoscaling_config"] = {**shipped, "initial_replicas": 1, **settings}


def settle_at_one(config: dict, dashboard: str, app: str) -> None:
    """Deploy `config` (in place: only autoscaling changed) once Serve wants one replica and
    runs exactly that one (none still starting or stopping)."""
    from kiln.serve.control import deploy

    deploy.deploy(config, dashboard)
    deploy.wait_until_running(config, dashboard)
    name = deployment_of(config, app)["name"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        wanted = deploy.details(dashboard)["applications"][app]["deployments"][name]
        states = [r["state"] for r in wanted["replicas"]]
        if wanted.get("target_num_replicas") == 1 and states == ["RUNNING"]:
            break
        time.sleep(1)
    time.sleep(2)


def sweep_run(
    dashboard: str, deployment: str, url: str | list[str], body: bytes | None, clients: int
) -> dict:
    with cpu_trace(dashboard, deployment) as trace:
        result = asyncio.run(
            generate_load(url, body, concurrency=clients, duration_s=SECONDS, warmup_s=0)
        )
    steady = window(result, STEADY_FROM, SECONDS)
    over_time = counts(trace)
    most = max(n for _, n in over_time)
    return {
        "rps": round((steady["requests"] - steady["errors"]) / (SECONDS - STEADY_FROM), 1),
        **{k: steady[k] for k in ("p50_ms", "p99_ms", "errors")},
        "replicas": most,
        "reached_s": round(next(t for t, n in over_time if n == most), 1),
        "replica_cores": round(cores(trace, STEADY_FROM), 2),
    }


def sweep(config: dict, dashboard: str, app: str, url, body, clients: tuple[int, ...]) -> dict:
    deployment = f"{app}/{deployment_of(config, app)['name']}"
    shipped = dict(deployment_of(config, app)["autoscaling_config"])
    results = {}
    for c in clients:
        for target in TARGETS:
            with_autoscaling(config, app, shipped, target_ongoing_requests=target, **QUICK)
            settle_at_one(config, dashboard, app)
            results[f"c={c}, target {target}"] = sweep_run(dashboard, deployment, url, body, c)
            print(f"{app} c={c} target {target}: {results[f'c={c}, target {target}']}")
    return results


def bursts(dashboard: str, deployment: str, url: str, body: bytes) -> dict:
    """BURSTS times: BURST_S of 32 clients then BURST_S of 2."""
    with cpu_trace(dashboard, deployment) as trace:
        burst_p99 = []
        for _ in range(BURSTS):
            for clients in (32, 2):
                result = asyncio.run(
                    generate_load(url, body, concurrency=clients, duration_s=BURST_S, warmup_s=0)
                )
                if clients == 32:
                    burst_p99.append(result.summary()["p99_ms"])
    over_time = counts(trace)
    (first, _), (last, _) = over_time[0], over_time[-1]
    held = sum(n * (t1 - t0) for (t0, n), (t1, _) in zip(over_time, over_time[1:], strict=False))
    return {
        "burst_p99_ms": burst_p99,
        "replicas_started": sum(series[0][0] > first for series in trace.values()),
        "replicas_stopped": sum(series[-1][0] < last for series in trace.values()),
        "replica_seconds": round(held),
        "replicas_over_time": over_time,
    }


def digits(results: dict) -> None:
    import ray

    from kiln.serve.control import deploy
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
            settle_at_one(config, dashboard, "digits-cnn")
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
