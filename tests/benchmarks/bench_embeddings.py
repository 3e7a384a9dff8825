"""A million-item recommender's training epoch with dense and with sparse embedding tables,
in one run: 1,000,000 users and items (KILN_BENCH_EMBEDDINGS_ITEMS; bench_recommend's
clustered generator, two interactions a user, the first from a permutation of the catalogue
so that every item is in training), one epoch of the two-tower on 2 DDP workers through `kiln
train`'s own path (`run_job`), `train.optimizer.sparse_embeddings` false, then true. Reports
each epoch's time (validation of 100,000 users included), training rows per second and the
ratio; figures go to bench-results/embeddings.json."""

import json
import os
import tempfile
from pathlib import Path

from kiln.cluster.connect import LOCAL_CLUSTER_ENV
from tests.benchmarks.bench_recommend import LARGE, clustered_interactions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "embeddings.json"
USERS = ITEMS = int(os.environ.get("KILN_BENCH_EMBEDDINGS_ITEMS", 1_000_000))


def epoch(events: Path, sparse: bool) -> dict:
    from kiln.train import run_job
    from kiln.validate import load_spec
    from tests.conftest import quiet_view

    overrides = [o for o in LARGE if not o.startswith("scaling.")]
    overrides += [
        f"data.path={events}",
        "data.streaming=true",  # the path such a catalogue takes; it counts the rows trained
        "register=null",
        "scaling.num_workers=2",
        f"train.optimizer.sparse_embeddings={str(sparse).lower()}",
    ]
    spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml", overrides)
    outcome = run_job(spec, quiet_view(spec))
    seconds = outcome.history[-1]["epoch_time_s"]
    rows = outcome.history[-1]["train_rows"]
    result = {"epoch_s": seconds, "train_rows": rows, "rows_per_s": rows / seconds}
    print(f"sparse_embeddings={sparse}: {result}", flush=True)
    return result


def main() -> None:
    import ray

    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-embeddings-")
    for name, value in LOCAL_CLUSTER_ENV.items():  # the local cluster as `kiln train` starts it
        os.environ.setdefault(name, value)
    events = Path(os.environ["KILN_HOME"]) / "events.parquet"
    clustered_interactions(USERS, ITEMS, per_user=2).to_parquet(events, index=False)
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    results = {"users": USERS, "items": ITEMS}
    results |= {name: epoch(events, name == "sparse") for name in ("dense", "sparse")}
    ray.shutdown()
    results["sparse_speedup"] = results["dense"]["epoch_s"] / results["sparse"]["epoch_s"]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
