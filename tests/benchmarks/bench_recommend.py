"""`/v1/recommend` with 10,000 users and 5,000 items, in one run: every request a cache hit
(warm users) against every request a miss (users never asked for before, so the vector is
computed and written back), at concurrency 1 and 16; and one Redis round trip alone for
reference. Figures go to bench-results/recommend.json."""

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kiln.bench.load import generate_load

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "recommend.json"
USERS, ITEMS, SECONDS, WARM = 10_000, 5_000, 6.0, 400
SYNTHETIC = f"data.params.synthetic={{users: {USERS}, items: {ITEMS}, interactions_per_user: 30}}"


def train(overrides: list[str]) -> None:
    from kiln.registry import ModelRegistry
    from kiln.train import run_job
    from kiln.validate import load_spec
    from tests.conftest import quiet_view

    spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml", overrides)
    run_job(spec, quiet_view(spec))
    ModelRegistry.open().promote("recsys-two-tower", 1, "production")


@contextlib.contextmanager
def recommender_served(
    overrides: list[str], one_replica: bool
) -> Iterator[tuple[dict, str, int, str]]:
    """Local Ray as `kiln serve` starts it, Kiln's embedded Redis, the recommender trained with
    `overrides` and its features loaded, serving/recsys.yaml deployed (each deployment at one
    fixed replica, or autoscaled as the file says): (config, dashboard, port, redis URL)."""
    import ray

    from kiln.features import EmbeddedRedis
    from kiln.serve.control import deploy
    from tests.conftest import free_port

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    home = Path(tempfile.mkdtemp(prefix="kiln-bench-recommend-"))
    os.environ["KILN_HOME"] = str(home)
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    redis = EmbeddedRedis(home / "redis", port=free_port()).start()
    try:
        train(overrides)
        load_features(redis.url)
        port = free_port()
        config = deploy.load_config(ROOT / "serving/recsys.yaml", port=port)
        deploy.use_redis(config, redis.url)
        for app in config["applications"] if one_replica else []:
            for d in app["deployments"]:
                d.pop("autoscaling_config", None)
                d["num_replicas"] = 1
        dashboard = "http://" + ray._private.worker.get_dashboard_url()
        deploy.deploy(config, dashboard)
        deploy.wait_until_running(config, dashboard)
        yield config, dashboard, port, redis.url
        deploy.shutdown(dashboard)
    finally:
        redis.stop()
        ray.shutdown()


def load_features(url: str) -> None:
    from kiln.features import FeatureStore, connect
    from kiln.features.materialize import interactions_for, recent_histories, write_histories

    history_len, frame = interactions_for("recsys-two-tower@production")
    store = FeatureStore(connect(url, timeout_s=10), history_len)
    write_histories(store, recent_histories(frame, history_len))


def redis_round_trip(url: str) -> dict:
    from kiln.features import FeatureStore, connect

    store = FeatureStore(connect(url, timeout_s=10), 20)
    times = []
    for user in range(1, 2001):
        start = time.perf_counter()
        store.read(user, "recsys-two-tower", 1)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def run(urls: list[str], concurrency: int) -> dict:
    result = asyncio.run(
        generate_load(urls, None, concurrency=concurrency, duration_s=SECONDS, warmup_s=0)
    )
    return result.summary()


def main() -> None:
    import httpx

    with recommender_served([SYNTHETIC, "train.epochs=2"], one_replica=True) as served:
        _, _, port, redis_url = served
        base = f"http://127.0.0.1:{port}/v1/recommend"
        warm = [f"{base}/{u}?k=10" for u in range(1, WARM + 1)]
        for url in warm:  # each computes and caches its user's vector
            assert httpx.get(url, timeout=30).json()["cache"] in ("miss", "hit")
        cold = iter(range(WARM + 1, USERS + 1))
        results = {"redis_round_trip": redis_round_trip(redis_url)}
        for c in (1, 16):
            results[f"hits, c={c}"] = run(warm, c)
            fresh = [f"{base}/{next(cold)}?k=10" for _ in range(4000 if c == 1 else 4500)]
            results[f"misses, c={c}"] = run(fresh, c)
        check = httpx.get(warm[0], timeout=30).json()["cache"]
        results["check"] = {"warm user answer": check}
    report(results)


def report(results: dict) -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"users": USERS, "items": ITEMS, "results": results}, indent=2))
    table = Table(
        "case",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        title=f"/v1/recommend, {USERS:,} users x {ITEMS:,} items, {SECONDS:g} s each",
    )
    for name, f in results.items():
        if "requests" in f:
            table.add_row(
                name,
                str(f["requests"]),
                f"{f['throughput_rps']:.0f}",
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                str(f["errors"] or "none"),
            )
    rtt = results["redis_round_trip"]
    Console().print(table)
    print(f"Redis round trip alone (HMGET): p50 {rtt['p50_ms']} ms, p99 {rtt['p99_ms']} ms")
    print(f"figures: {OUT}")


if __name__ == "__main__":
    main()
