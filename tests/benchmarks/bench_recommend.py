"""`/v1/recommend` at three catalogue sizes, in one run: 5,000 items (the job's synthetic data,
10,000 users, exact scoring), 100,000 items (exact scoring, forced) and 1,000,000 items with as
many users (the IVF index). Each: every request a cache hit (warm users) against every request
a miss (users never asked for, so the vector is computed and written back), at concurrency 1
and 16: req/s, p50, p99, and CPU milliseconds per request summed over every process of the
serving path (HAProxy, the proxy, the replicas, Ray's own: the machine's busy CPU less the
load generator's). Beside them: the deploy (to running, Serve's own start included), a
second replica's start while Serve runs (as autoscaling adds one), the index's mode and
measured recall, and Redis's round trip alone.
Figures go to bench-results/recommend.json.

The two large catalogues come from a generator that scales (`clustered_interactions`): users
and items in 1,000 taste clusters, Zipf popularity within a cluster; the model is trained one
epoch on one worker (quality is not the point here, the serving path is).
"""

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from kiln.bench.load import generate_load
from tests.benchmarks.bench_serve import busy_cpu

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "recommend.json"
SECONDS, WARM = 6.0, 400
SMALL = "data.params.synthetic={users: 10000, items: 5000, interactions_per_user: 30}"
CASES = {  # name: (users, items, exact search up to this many items)
    "5,000 items, exact": (10_000, 5_000, 20_000),
    "100,000 items, exact": (100_000, 100_000, 10**9),
    "1,000,000 items, IVF": (1_000_000, 1_000_000, 20_000),
}
LARGE = [  # a brief model for the large catalogues
    "train.epochs=1",
    "train.batch_size=4096",
    "train.early_stopping=null",
    "scaling.num_workers=1",
    "data.params.history_len=10",
    "model.params.dim=32",
    "model.params.hidden=64",
]


def clustered_interactions(users: int, items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """`per_user` interactions each: 80% from the user's taste cluster (Zipf-ranked items),
    20% anywhere, and every user's first one (always in training) from a permutation of the
    catalogue, so that every item is in it; times in order."""
    rng = np.random.default_rng(seed)
    clusters = 1000
    item_cluster = rng.integers(0, clusters, items)
    order = np.argsort(item_cluster, kind="stable")
    starts = np.searchsorted(item_cluster[order], np.arange(clusters))
    sizes = np.bincount(item_cluster, minlength=clusters)
    user = np.repeat(np.arange(1, users + 1), per_user)
    cluster = rng.integers(0, clusters, users)[user - 1]
    rank = np.minimum(rng.zipf(1.6, len(user)) - 1, sizes[cluster] - 1)
    item = order[starts[cluster] + rank]
    anywhere = rng.random(len(user)) < 0.2
    item[anywhere] = rng.integers(0, items, int(anywhere.sum()))
    item[::per_user] = np.resize(rng.permutation(items), users)
    return pd.DataFrame({"user": user, "item": item + 1, "time": np.arange(len(user))})


def train(overrides: list[str]) -> None:
    from kiln.registry import ModelRegistry
    from kiln.train import run_job
    from kiln.validate import load_spec
    from tests.conftest import quiet_view

    spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml", overrides)
    run_job(spec, quiet_view(spec))
    ModelRegistry.open().promote("recsys-two-tower", 1, "production")


@contextlib.contextmanager
def recommender_served(overrides: list[str], exact_up_to: int) -> Iterator[dict]:
    """Local Ray as `kiln serve` starts it, Kiln's embedded Redis, the recommender trained with
    `overrides` and its features loaded, serving/recsys.yaml deployed with one replica each."""
    import ray

    from kiln.features import EmbeddedRedis
    from kiln.serve.control import deploy
    from tests.conftest import free_port

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ["KILN_EXACT_RETRIEVAL_UP_TO"] = str(exact_up_to)  # replicas inherit it
    home = Path(tempfile.mkdtemp(prefix="kiln-bench-recommend-"))
    os.environ["KILN_HOME"] = str(home)
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    redis = EmbeddedRedis(home / "redis", port=free_port()).start()
    try:
        train(overrides)
        loaded_s = load_features(redis.url)
        port = free_port()
        config = deploy.load_config(ROOT / "serving/recsys.yaml", port=port)
        deploy.use_redis(config, redis.url)
        for app in config["applications"]:
            for d in app["deployments"]:
                d.pop("autoscaling_config", None)
                d["num_replicas"] = 1
        dashboard = "http://" + ray._private.worker.get_dashboard_url()
        started = time.perf_counter()
        deploy.deploy(config, dashboard)
        deploy.wait_until_running(config, dashboard, timeout_s=900)
        start_s = time.perf_counter() - started
        info = httpx.get(f"http://127.0.0.1:{port}/v1/", timeout=30).json()
        yield {
            "config": config,
            "dashboard": dashboard,
            "port": port,
            "redis": redis.url,
            "start_s": start_s,
            "info": info,
            "features_load_s": loaded_s,
        }
        deploy.shutdown(dashboard)
    finally:
        redis.stop()
        ray.shutdown()


def load_features(url: str) -> float:
    from kiln.features import FeatureStore, connect
    from kiln.features.materialize import interactions_for, recent_histories, write_histories

    started = time.perf_counter()
    history_len, frame = interactions_for("recsys-two-tower@production")
    store = FeatureStore(connect(url, timeout_s=10), history_len)
    write_histories(store, recent_histories(frame, history_len))
    return time.perf_counter() - started


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
    with busy_cpu() as spent:
        result = asyncio.run(
            generate_load(urls, None, concurrency=concurrency, duration_s=SECONDS, warmup_s=0)
        )
    summary = result.summary()
    summary["cpu_ms_per_request"] = round(spent["seconds"] * 1000 / max(summary["ok"], 1), 3)
    return summary


def measure(served: dict, users: int) -> dict:
    base = f"http://127.0.0.1:{served['port']}/v1/recommend"
    warm = [f"{base}/{u}?k=10" for u in range(1, WARM + 1)]
    for url in warm:  # each computes and caches its user's vector
        assert httpx.get(url, timeout=30).json()["cache"] in ("miss", "hit")
    cold = iter(range(WARM + 1, users + 1))
    results = {
        "deploy_s": round(served["start_s"], 1),
        "retrieval": served["info"]["retrieval"],
        "redis_round_trip": redis_round_trip(served["redis"]),
    }
    for c in (1, 16):
        results[f"hits, c={c}"] = run(warm, c)
        fresh = [f"{base}/{next(cold)}?k=10" for _ in range(4000 if c == 1 else 4500)]
        results[f"misses, c={c}"] = run(fresh, c)
    results["added_replica_s"] = round(added_replica_s(served), 1)
    return results


def added_replica_s(served: dict) -> float:
    """Seconds from asking for a second Recommender replica, as autoscaling does while Serve
    runs, to its running: a replica's own start, without Serve's (which the deploy includes)."""
    from kiln.serve.control import deploy

    config, dashboard = served["config"], served["dashboard"]
    (app,) = [a for a in config["applications"] if a["name"] == "recommend"]
    app["deployments"][0]["num_replicas"] = 2
    started = time.perf_counter()
    deploy.deploy(config, dashboard)
    while time.perf_counter() - started < 300:
        status = deploy.details(dashboard)["applications"]["recommend"]["deployments"]
        if len(deploy.running_replicas(status["Recommender"])) == 2:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError("the second replica did not start within 300 s")


def main() -> None:
    # KILN_BENCH_RECOMMEND_ITEMS=1000000: only the catalogues named (item counts, commas),
    # the others' figures kept from the last run
    only = os.environ.get("KILN_BENCH_RECOMMEND_ITEMS")
    results = json.loads(OUT.read_text()) if only and OUT.exists() else {}
    for name, (users, items, exact_up_to) in CASES.items():
        if only and str(items) not in only.split(","):
            continue
        if items == 5_000:
            overrides = [SMALL, "train.epochs=2"]
        else:
            path = Path(tempfile.mkdtemp(prefix="kiln-bench-interactions-")) / "data.parquet"
            clustered_interactions(users, items, per_user=4).to_parquet(path)
            overrides = [*LARGE, f"data.path={path}"]
        started = time.perf_counter()
        with recommender_served(overrides, exact_up_to) as served:
            prepared = time.perf_counter() - started
            results[name] = {"prepare_s": round(prepared, 1), **measure(served, users)}
        report(results)


def report(results: dict) -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    table = Table(
        "catalogue",
        "case",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/req",
        "errors",
        title=f"/v1/recommend, one replica, {SECONDS:g} s a case",
    )
    for catalogue, figures in results.items():
        for case, f in figures.items():
            if isinstance(f, dict) and "requests" in f:
                table.add_row(
                    catalogue,
                    case,
                    f"{f['throughput_rps']:.0f}",
                    f"{f['p50_ms']:.2f}",
                    f"{f['p99_ms']:.2f}",
                    f"{f['cpu_ms_per_request']:.2f}",
                    str(f["errors"] or "none"),
                )
    Console().print(table)
    for catalogue, figures in results.items():
        rtt, retrieval = figures["redis_round_trip"], figures["retrieval"]
        print(
            f"{catalogue}: deploy {figures['deploy_s']} s, an added replica "
            f"{figures['added_replica_s']} s, retrieval {retrieval}, "
            f"Redis alone p50 {rtt['p50_ms']} ms p99 {rtt['p99_ms']} ms"
        )
    print(f"figures: {OUT}")


if __name__ == "__main__":
    main()
