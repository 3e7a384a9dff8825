"""Interactions prepared for a recommender, streamed against in memory, in one run.

    python -m tests.benchmarks interactions   # KILN_BENCH_INTERACTIONS_USERS=1000000, 20 each

Clustered interactions (bench_recommend's generator: 20 per user, rows shuffled over Parquet
files, written once under bench-results/) are prepared by `kiln.data.build` in a child process
with a Ray of its own (2 CPUs, a 1 GiB object store), once streamed and once in memory
(`data.streaming`): wall time and the driver's peak RSS sampled from outside, and the object
store's peak use (/dev/shm). Streamed, the child then reads the training windows once as the
workers would (rows per second of that pass alone).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.bench_stream import cached, measured_child

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "interactions.json"
PER_USER, STORE_MB = 20, 1024


def main() -> None:
    users = int(os.environ.get("KILN_BENCH_INTERACTIONS_USERS", 1_000_000))
    folder = cached_interactions(users)
    results: dict = {
        "users": users,
        "interactions": users * PER_USER,
        "bytes": sum(p.stat().st_size for p in folder.glob("*.parquet")),
    }
    for streaming in (True, False):
        results["streamed" if streaming else "in_memory"] = prepared(folder, streaming)
    streamed, whole = results["streamed"], results["in_memory"]
    results["driver_peak_rss_ratio"] = streamed["driver_peak_rss_mb"] / whole["driver_peak_rss_mb"]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def cached_interactions(users: int) -> Path:
    from tests.benchmarks.bench_recommend import clustered_interactions

    def write(folder: Path) -> None:
        frame = clustered_interactions(users, max(1000, users // 5), PER_USER)
        order = np.random.default_rng(0).permutation(len(frame))  # rows in no user's order
        for i, rows in enumerate(np.array_split(order, max(1, len(frame) // 400_000))):
            frame.iloc[rows].to_parquet(folder / f"part-{i:04d}.parquet", index=False)

    return cached(f"interactions-{users}", write)


def prepared(folder: Path, streaming: bool) -> dict:
    module = ["tests.benchmarks.bench_interactions", str(folder)]
    result, peaks, wall_s = measured_child([*module, "stream" if streaming else "memory"])
    return {
        **result,
        "wall_s": wall_s,
        "driver_peak_rss_mb": peaks.driver / 2**20,
        "object_store_peak_mb": peaks.store / 2**20,
    }


def child(folder: str, mode: str) -> None:
    """Prepare the data (and, streamed, read the training windows once): one JSON line."""
    import ray

    from kiln import data
    from kiln.spec import DataSpec

    ray.init(num_cpus=2, object_store_memory=STORE_MB * 2**20, log_to_driver=False)
    spec = DataSpec(name="interactions", path=folder, streaming=mode == "stream")
    started = time.perf_counter()
    dataset = data.build(spec, "recommendation")
    result = {"prepare_s": time.perf_counter() - started, "train_rows": _train_rows(dataset)}
    result["val_users"] = len(dataset.extras["candidates"])
    if isinstance(dataset, data.StreamedDataset):
        started, rows = time.perf_counter(), 0
        for block in dataset.datasets["train"].iter_batches(batch_size=None, batch_format="numpy"):
            rows += len(block["y"])
        result["windows_rows_per_s"] = rows / (time.perf_counter() - started)
    ray.shutdown()
    print(json.dumps(result))


def _train_rows(dataset) -> int:
    return dataset.train_rows if hasattr(dataset, "train_rows") else len(dataset.y_train)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])
