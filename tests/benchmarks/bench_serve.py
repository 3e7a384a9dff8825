"""Kiln's digits-cnn endpoint against a plain FastAPI + uvicorn server of the same model, in
one run, with the same load generator and payload: throughput and p50/p99 at concurrency 1
and 32, Kiln with batching on and off, with one and two replicas, and with JSON tensors, binary
tensors (the Open Inference Protocol's binary extension, Triton's default) and gRPC (on Serve's
port with `application` metadata, and without it through the index's gRPC gateway), and
KServe V1's `{"instances": [...]}` (relayed by the index to the model's replica). Beside
speed, the CPU each answered request costs over every process of the path (HAProxy, Serve's
proxy, the replica, Ray's own, or uvicorn): the machine's busy CPU time during the run, less the
load generator's own, per answered request. Figures go to bench-results/serve.json; the ratios are
Kiln / plain at the same concurrency."""

import asyncio
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from kiln.bench.load import (
    binary_body_for,
    body_for,
    generate_grpc_load,
    generate_load,
    grpc_request_for,
)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "serve.json"
SECONDS, WARMUP = 10.0, 2.0
CONCURRENCY = (1, 32)
KILN_SETUPS = {  # name: (replicas, max_batch_size)
    "kiln, 1 replica, no batching": (1, 1),
    "kiln, 1 replica, batching 16": (1, 16),
    "kiln, 2 replicas, batching 16": (2, 16),
}


def measure(url: str, body: bytes, headers: dict | None = None) -> dict:
    """REST: POST `body` to `url`."""
    return {
        c: measure_at(lambda s, c=c: generate_load(url, body, **load_of(c, s), headers=headers))
        for c in CONCURRENCY
    }


def measure_grpc(address: str, application: str | None) -> dict:
    """gRPC: the same image as ModelInfer's raw_input_contents; `application` metadata unless
    None (Triton's client's default, for the gateway)."""
    request = grpc_request_for(METADATA)
    metadata = {"application": application} if application else {}
    return {
        c: measure_at(
            lambda s, c=c: generate_grpc_load(address, request, **load_of(c, s), metadata=metadata)
        )
        for c in CONCURRENCY
    }


def load_of(concurrency: int, seconds: float) -> dict:
    return {"concurrency": concurrency, "duration_s": seconds, "warmup_s": 0}


def measure_at(load) -> dict:
    """`load(seconds)`, a coroutine giving a LoadResult, run once to warm up, then measured;
    CPU ms per answered request is also CPU seconds per 1,000 requests."""
    asyncio.run(load(WARMUP))
    with busy_cpu() as spent:
        summary = asyncio.run(load(SECONDS)).summary()
    summary["cpu_ms_per_request"] = round(spent["seconds"] * 1000 / max(summary["ok"], 1), 3)
    return summary


@contextlib.contextmanager
def busy_cpu():
    """Busy CPU seconds of the whole machine while the block runs, less this process's own
    (the load generator's): what every process serving the requests spent."""
    machine, own = _busy(psutil.cpu_times()), psutil.Process().cpu_times()
    spent: dict[str, float] = {}
    yield spent
    after = psutil.Process().cpu_times()
    generator = (after.user + after.system) - (own.user + own.system)
    spent["seconds"] = _busy(psutil.cpu_times()) - machine - generator


def _busy(times) -> float:
    return sum(
        getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")
    )


def idle_cores(seconds: float = 5.0) -> float:
    """Cores kept busy with no load at all (Ray's and the server's background work)."""
    with busy_cpu() as spent:
        time.sleep(seconds)
    return round(spent["seconds"] / seconds, 3)


def train_model() -> None:
    from kiln.registry import ModelRegistry
    from kiln.train import run_job
    from kiln.validate import load_spec
    from tests.conftest import quiet_view

    spec = load_spec(ROOT / "jobs/digits-cnn.yaml", ["train.epochs=3"])
    run_job(spec, quiet_view(spec))
    ModelRegistry.open().promote("digits-cnn", 1, "production")  # what the config follows


def plain_server(registry: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.benchmarks.plain_server", "--registry", registry]
    server = subprocess.Popen([*command, "--model", "digits-cnn@1", "--port", str(port)], cwd=ROOT)
    for _ in range(120):
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the plain server did not start")


def kiln_config(
    port: int, grpc_port: int, replicas: int, batch: int, gateway_port: int | None = None
) -> dict:
    from kiln.serve.control import deploy

    config = deploy.load_config(
        ROOT / "serving/digits.yaml",
        port=port,
        only=["digits-cnn"],
        grpc_port=grpc_port,
        grpc_gateway_port=gateway_port,
    )
    app = config["applications"][-1]
    deployment = copy.deepcopy(app["deployments"][0])
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = replicas
    deployment["user_config"] = {"max_batch_size": batch, "batch_wait_ms": 0}
    app["deployments"] = [deployment]
    return config


def main() -> None:
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # as `kiln serve` starts Ray
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # Ray's default metrics report interval (10 s), not the test suite's 1 s: tests.conftest,
    # imported next for its helpers, only sets what is not set yet.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "10000")
    import ray

    from kiln.serve.control import deploy
    from tests.conftest import free_port

    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-serve-")
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    train_model()
    from kiln.registry import ModelRegistry

    registry = ModelRegistry.open().uri
    results: dict = {}
    idle: dict = {}

    port = free_port()
    server = plain_server(registry, port)
    url = f"http://127.0.0.1:{port}/v2/models/digits-cnn"
    body = body_for(METADATA)  # one random 8x8 image, the same bytes for every server
    try:
        idle["plain fastapi + uvicorn"] = idle_cores()
        results["plain fastapi + uvicorn"] = measure(f"{url}/infer", body)
    finally:
        server.terminate()
        server.wait()

    dashboard = "http://" + ray._private.worker.get_dashboard_url()
    port, grpc_port, gateway_port = free_port(), free_port(), free_port()
    for name, (replicas, batch) in KILN_SETUPS.items():
        config = kiln_config(port, grpc_port, replicas, batch, gateway_port)
        deploy.deploy(config, dashboard)  # batch size alone changes in place (user_config)
        deploy.wait_until_running(config, dashboard)
        time.sleep(3)  # replicas that were just replaced finish draining
        idle[name] = idle_cores()
        url = f"http://127.0.0.1:{port}/v2/models/digits-cnn/infer"
        results[name] = measure(url, body)
        if (replicas, batch) == (1, 16):  # the same image as raw bytes, answers in binary
            results[f"{name}, binary"] = measure(url, *binary_body_for(METADATA))
            results[f"{name}, gRPC"] = measure_grpc(f"127.0.0.1:{grpc_port}", "digits-cnn")
            gateway = measure_grpc(f"127.0.0.1:{gateway_port}", None)
            results[f"{name}, gRPC gateway"] = gateway
            v1 = f"http://127.0.0.1:{port}/v1/models/digits-cnn:predict"  # through the index
            results[f"{name}, KServe V1"] = measure(v1, v1_body(body))
    deploy.shutdown(dashboard)
    ray.shutdown()
    report(results, idle)


def v1_body(body: bytes) -> bytes:
    """The same image as KServe V1's one instance of 64 numbers."""
    pixels = json.loads(body)["inputs"][0]["data"]
    return json.dumps({"instances": [pixels]}).encode()


METADATA = {
    "name": "digits-cnn",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
}


def report(results: dict, idle: dict) -> None:
    plain = results["plain fastapi + uvicorn"]
    for runs in results.values():
        for c, figures in runs.items():
            figures["throughput_vs_plain"] = round(
                figures["throughput_rps"] / plain[c]["throughput_rps"], 3
            )
            figures["p99_vs_plain"] = round(figures["p99_ms"] / plain[c]["p99_ms"], 3)
            figures["cpu_vs_plain"] = round(
                figures["cpu_ms_per_request"] / plain[c]["cpu_ms_per_request"], 3
            )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        json.dumps({"seconds": SECONDS, "idle_cores": idle, "results": results}, indent=2)
    )
    table = Table(
        "server",
        "c",
        "req/s",
        "p50 ms",
        "p99 ms",
        "× plain req/s",
        "× plain p99",
        "CPU ms/req",
        "× plain CPU",
        "errors",
        title=f"serving digits-cnn, {SECONDS:g} s per run (same load generator)",
    )
    for name, runs in results.items():
        for c, f in runs.items():
            table.add_row(
                name,
                str(c),
                f"{f['throughput_rps']:.0f}",
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{f['throughput_vs_plain']:.2f}",
                f"{f['p99_vs_plain']:.2f}",
                f"{f['cpu_ms_per_request']:.2f}",
                f"{f['cpu_vs_plain']:.2f}",
                str(sum(f["errors"].values())),
            )
    Console(width=160).print(table)
    print("cores busy with no load:", json.dumps(idle))
    print(f"figures: {OUT}")


if __name__ == "__main__":
    main()
