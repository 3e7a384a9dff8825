"""ASHA and PBT against FIFO on digits-cnn, in one run: the same 8 trials (same seed, so the same
sampled configurations) and the same epoch budget per trial. Reports wall time, the best
validation accuracy and the median time from a trial's start to its first epoch of each;
figures go to bench-results/tune.json."""

import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kiln.cluster.connect import LOCAL_CLUSTER_ENV
from kiln.tune import run_search
from kiln.validate import load_spec

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "tune.json"
SCHEDULERS = ("fifo", "asha", "pbt")
COMMON = ["tune.num_samples=8", "train.epochs=8", "tune.seed=0", "register=null"]


def search(scheduler: str) -> dict:
    spec = load_spec(
        ROOT / "jobs/digits-cnn-tune.yaml", [*COMMON, f"tune.scheduler.name={scheduler}"]
    )
    started = time.perf_counter()
    outcome = run_search(spec, quiet=True)
    wall = time.perf_counter() - started
    epochs = int(outcome.trials["epochs"].sum())
    return {
        "wall_s": wall,
        "best_val_accuracy": outcome.best_metric,
        "epochs_trained": epochs,
        "trials_stopped": int((outcome.trials["status"] == "STOPPED").sum()),
        "median_trial_first_epoch_s": float(outcome.trials["first_epoch_s"].median()),
        # PBT: how many times a final model's weights passed from one trial to another
        "inherited_links": int(trials["lineage"].str.count(" > ").sum())
        if "lineage" in (trials := outcome.trials)
        else 0,
    }


def main() -> None:
    import ray

    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-bench-tune-")
    for name, value in LOCAL_CLUSTER_ENV.items():  # the local cluster as `kiln tune` starts it
        os.environ.setdefault(name, value)
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    results = {name: search(name) for name in SCHEDULERS}
    ray.shutdown()
    for name in ("asha", "pbt"):
        results[f"{name}_wall_vs_fifo"] = results[name]["wall_s"] / results["fifo"]["wall_s"]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    table = Table(
        "scheduler",
        "wall s",
        "best val acc",
        "epochs trained",
        "trials stopped",
        "median trial start to 1st epoch s",
        "inherited links",
        title="tuning benchmark: 8 trials x 8 epochs, digits-cnn",
    )
    for name in SCHEDULERS:
        r = results[name]
        table.add_row(
            name,
            f"{r['wall_s']:.1f}",
            f"{r['best_val_accuracy']:.4f}",
            str(r["epochs_trained"]),
            str(r["trials_stopped"]),
            f"{r['median_trial_first_epoch_s']:.1f}",
            str(r["inherited_links"]),
        )
    Console().print(table)
    Console().print(
        f"wall time / FIFO: ASHA {results['asha_wall_vs_fifo']:.2f}, "
        f"PBT {results['pbt_wall_vs_fifo']:.2f}"
    )
