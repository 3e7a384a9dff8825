"""What a traffic policy costs on the hot path, in one run: digits-cnn on one replica with
batching 16, at concurrency 1 and 32, with no policy, a 90/10 canary, a sticky A/B split (a
header per request), a shadow application that gets a copy of every request (the primary's
latency; the shadow has its own replica), drift tracking (the default: every answered row in
the window) and an access log line for every answer. Figures go to
bench-results/rollout.json; the ratios are each policy / no policy at the same concurrency."""

import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kiln.bench.load import body_for
from tests.benchmarks.bench_serve import METADATA, kiln_config, measure, train_model

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "rollout.json"
APP = "digits-cnn"
NONE = {"traffic": None, "drift": None, "access_log_share": 0.0}
POLICIES = {  # each policy's user_config over NONE
    "no policy": {},
    "canary 90/10": {"traffic": {"split": {"production": 90, "candidate": 10}}},
    "sticky A/B 50/50": {
        "traffic": {"split": {"production": 1, "candidate": 1}, "sticky_header": "x-user"}
    },
    "shadow (every request)": {"traffic": {"shadow": {"application": f"{APP}-shadow"}}},
    "drift tracking (default)": {"drift": {}},
    "access log, every answer": {"access_log_share": 1.0},
}


def with_policy(port: int, grpc_port: int, policy: dict) -> dict:
    config = kiln_config(port, grpc_port, replicas=1, batch=16)
    primary = config["applications"][-1]
    primary["deployments"][0]["user_config"].update({**NONE, **policy})
    shadow = json.loads(json.dumps(primary))  # the same model, its own application and replica
    shadow.update(name=f"{APP}-shadow", route_prefix=f"/v2/models/{APP}-shadow")
    shadow["deployments"][0]["user_config"].update(NONE)
    config["applications"].append(shadow)
    return config


def register_candidate() -> None:
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open()
    source = registry.resolve(f"{APP}@production")
    files = {name: registry.read(source, name) for name in source.manifest["files"]}
    registry.promote(APP, registry.register(APP, files).version, "candidate")


def main() -> None:
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # as `kiln serve` starts Ray
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ.setdefault("RAY_metrics_report_interval_ms", "10000")
    import ray

    from kiln.serve.control import deploy
    from tests.conftest import free_port

    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-rollout-")
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    train_model()
    register_candidate()
    dashboard = "http://" + ray._private.worker.get_dashboard_url()
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/v2/models/{APP}/infer"
    body = body_for(METADATA)
    results = {}
    for name, policy in POLICIES.items():
        config = with_policy(port, grpc_port, policy)
        deploy.deploy(config, dashboard)  # a user_config change applies in place
        deploy.wait_until_running(config, dashboard)
        time.sleep(3)
        sticky = "sticky_header" in (policy.get("traffic") or {})
        headers = {"x-user": "user-7"} if sticky else None
        results[name] = measure(url, body, headers)
    deploy.shutdown(dashboard)
    ray.shutdown()
    results["drift, in process"] = drift_in_process()
    report(results)


def drift_in_process(calls: int = 2000) -> dict:
    """Drift tracking's own work, timed without the network: one `observe` per model call
    (a request alone, or a batch of 16) and one `export` of a full window (each watcher tick)."""
    import numpy as np
    import torch

    from kiln.registry import ModelRegistry
    from kiln.serve.config import Drift
    from kiln.serve.replica.drift import DriftMonitor
    from kiln.serve.replica.metrics import DriftMetrics
    from kiln.serve.replica.predictor import Predictor

    registry = ModelRegistry.open()
    predictor = Predictor.load(registry, registry.resolve(f"{APP}@production"))
    monitor = DriftMonitor(Drift(), DriftMetrics(APP))
    monitor.watch(predictor)
    figures = {}
    for rows in (1, 16):
        x = torch.from_numpy(predictor.reference[:rows])
        outputs = predictor.run(x)
        start = time.perf_counter()
        for _ in range(calls):
            monitor.observe(predictor.version, x, outputs)
        figures[f"observe_us_batch_{rows}"] = round((time.perf_counter() - start) / calls * 1e6, 1)
    start = time.perf_counter()
    monitor.export({predictor.version})
    figures["export_ms_full_window"] = round((time.perf_counter() - start) * 1000, 2)
    figures["features"] = int(np.prod(predictor.reference.shape[1:]))
    return figures


def report(results: dict) -> None:
    base = results["no policy"]
    in_process = results.pop("drift, in process")
    for runs in results.values():
        for c, figures in runs.items():
            figures["throughput_vs_none"] = round(
                figures["throughput_rps"] / base[c]["throughput_rps"], 3
            )
            figures["p99_vs_none"] = round(figures["p99_ms"] / base[c]["p99_ms"], 3)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({**results, "drift, in process": in_process}, indent=2))
    table = Table(
        "policy",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "× none req/s",
        "× none p99",
        "CPU ms/req",
        "errors",
        title="traffic policies on digits-cnn (1 replica, batching 16)",
    )
    for name, runs in results.items():
        for c, f in runs.items():
            table.add_row(
                name,
                str(c),
                f"{f['throughput_rps']:.0f}",
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{f['throughput_vs_none']:.2f}",
                f"{f['p99_vs_none']:.2f}",
                f"{f['cpu_ms_per_request']:.2f}",
                str(sum(f["errors"].values())),
            )
    Console(width=140).print(table)
    print(f"drift tracking in process: {in_process}")
    print(f"figures: {OUT}")
