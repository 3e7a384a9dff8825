"""A soak of the recommender (`/v1/recommend`, Redis feature cache) at a fixed rate for 10
minutes: p50/p99 and errors per minute, and each replica's memory at the start and the end
(growth per hour extrapolated); then the cold start of the Recommender from zero replicas.
Figures go to bench-results/soak.json and soak.png. KILN_SOAK_S shortens the soak."""

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from kiln.bench.load import generate_load
from kiln.bench.soak import ReplicaSampler, draw_soak, soak_report
from tests.benchmarks.bench_recommend import recommender_served

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results"
SOAK_S = float(os.environ.get("KILN_SOAK_S", 600))
RATE, USERS, INTERVAL_S = 100.0, 2000, 60.0


def recommender(config: dict) -> dict:
    app = next(a for a in config["applications"] if a["name"] == "recommend")
    return app["deployments"][0]


def cold_starts(config: dict, dashboard: str, url: str, times: int = 3) -> list[float]:
    """The Recommender allowed to scale to zero: after each idle spell, one request's time."""
    from kiln.serve.control import deploy

    recommender(config)["autoscaling_config"].update(
        min_replicas=0, initial_replicas=0, downscale_to_zero_delay_s=5, downscale_delay_s=5
    )
    deploy.deploy(config, dashboard)
    seconds = []
    for _ in range(times):
        while running(dashboard):
            time.sleep(1)
        start = time.perf_counter()
        assert httpx.get(url, timeout=120).status_code == 200
        seconds.append(round(time.perf_counter() - start, 2))
    return seconds


def running(dashboard: str) -> int:
    from kiln.serve.control import deploy

    app = deploy.details(dashboard)["applications"]["recommend"]
    return sum(r["state"] != "STOPPING" for r in app["deployments"]["Recommender"]["replicas"])


def main() -> None:
    with recommender_served(["train.epochs=2"], one_replica=False) as served:
        config, dashboard, port, _ = served
        base = f"http://127.0.0.1:{port}/v1/recommend"
        urls = [f"{base}/{u}?k=10" for u in np.random.default_rng(0).integers(1, USERS, 10_000)]
        sampler = ReplicaSampler(dashboard, every_s=10).start()
        result = asyncio.run(generate_load(urls, None, rate=RATE, duration_s=SOAK_S, warmup_s=2))
        report = soak_report(result, sampler.stop(), INTERVAL_S)
        report["cold_start_s"] = cold_starts(config, dashboard, urls[0])
    show(report)


def show(report: dict) -> None:
    OUT.mkdir(exist_ok=True)
    title = f"/v1/recommend at {RATE:g} req/s for {SOAK_S / 60:g} min"
    draw_soak(report, title, OUT / "soak.png")
    (OUT / "soak.json").write_text(json.dumps({"rate": RATE, **report}, indent=2))
    table = Table("minute", "requests", "errors", "p50 ms", "p99 ms", title=title)
    for i in report["intervals"]:
        minute = f"{i['from_s'] / 60:g}"
        table.add_row(minute, *(str(i[k]) for k in ("requests", "errors", "p50_ms", "p99_ms")))
    Console().print(table)
    for name, r in report["replicas"].items():
        print(f"{name}: {r['start_mb']} -> {r['end_mb']} MB, {r['growth_mb_per_hour']:+} MB/hour")
    print(f"cold start from zero replicas: {report['cold_start_s']} s")
    print(f"figures: {OUT / 'soak.json'}, {OUT / 'soak.png'}")


if __name__ == "__main__":
    main()
