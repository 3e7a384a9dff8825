"""Training speed, side by side in one run on the same data and model (digits-cnn):

- epoch time of a plain PyTorch loop (one process; default threads and one thread),
- epoch time under Kiln with 1 and with 2 Ray Train workers (DDP over gloo on CPU),
- time from typing `kiln train` to the first reported epoch (a fresh process, Ray included).

Figures go to bench-results/train.json; ratios are Kiln over the plain loop.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

from kiln import data as datasets
from kiln import models, tasks
from kiln.validate import load_spec
from tests.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "digits-cnn.yaml"
EPOCHS = 8
OUT = ROOT / "bench-results" / "train.json"


def plain_pytorch(threads: int | None) -> dict[str, float]:
    """The loop a user would write by hand: same model, data, batch size and optimizer."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    spec = load_spec(JOB)
    torch.manual_seed(0)
    data = datasets.build(spec.data, spec.task)
    model = models.create(spec.model, data.schema)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train.optimizer.lr)
    loader = DataLoader(
        TensorDataset(torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)),
        batch_size=spec.train.batch_size,
        shuffle=True,
    )
    criterion = tasks.get(spec.task).criterion()
    times = []
    for _ in range(EPOCHS):
        tick = time.perf_counter()
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        evaluate(model, data.x_val, data.y_val, data.schema)  # Kiln validates every epoch too
        times.append(time.perf_counter() - tick)
    torch.set_num_threads(previous)
    accuracy = evaluate(model, data.x_val, data.y_val, data.schema)["val_accuracy"]
    return {"epoch_s": statistics.median(times[1:]), "val_accuracy": accuracy}


def kiln_run(workers: int, home: str) -> dict[str, float]:
    from rich.console import Console as RichConsole

    from kiln.train import run_job
    from kiln.train.progress import ProgressView

    spec = load_spec(
        JOB,
        [
            f"scaling.num_workers={workers}",
            f"train.epochs={EPOCHS}",
            "train.early_stopping=null",
            f"register.name=bench-{workers}w",
        ],
    )
    view = ProgressView(spec.name, EPOCHS, "val_accuracy", RichConsole(quiet=True), quiet=True)
    started = time.perf_counter()
    outcome = run_job(spec, view)
    wall = time.perf_counter() - started
    times = [h["epoch_time_s"] for h in outcome.history]
    return {
        "epoch_s": statistics.median(times[1:]),
        "val_accuracy": outcome.metrics["val_accuracy"],
        "fit_wall_s": wall,
    }


def time_to_first_epoch(home: str) -> float:
    """Seconds from starting `kiln train` (a new process) to its first epoch line."""
    env = {**os.environ, "KILN_HOME": home}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln", "train", str(JOB), "--set", "train.epochs=2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    first = None
    assert process.stdout is not None
    for line in process.stdout:
        if first is None and line.lstrip().startswith("epoch"):
            first = time.perf_counter() - started
    process.wait()
    if first is None:
        raise RuntimeError("kiln train printed no epoch")
    return first


def main() -> None:
    import ray

    home = tempfile.mkdtemp(prefix="kiln-bench-")
    os.environ["KILN_HOME"] = home
    results = {
        "plain_pytorch_default_threads": plain_pytorch(None),
        "plain_pytorch_1_thread": plain_pytorch(1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results["kiln_1_worker"] = kiln_run(1, home)
    results["kiln_2_workers"] = kiln_run(2, home)
    ray.shutdown()
    results["kiln_train_to_first_epoch_s"] = time_to_first_epoch(home)
    base = results["plain_pytorch_default_threads"]["epoch_s"]
    for key in ("kiln_1_worker", "kiln_2_workers", "plain_pytorch_1_thread"):
        results[key]["epoch_time_vs_plain"] = results[key]["epoch_s"] / base
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    show(results)


def show(results: dict) -> None:
    table = Table(
        "digits-cnn, epoch of 1,437 images",
        "median epoch s",
        "× plain",
        "val acc",
        title=f"training benchmark ({EPOCHS} epochs; {OUT.relative_to(ROOT)})",
    )
    for key in (
        "plain_pytorch_default_threads",
        "plain_pytorch_1_thread",
        "kiln_1_worker",
        "kiln_2_workers",
    ):
        r = results[key]
        table.add_row(
            key,
            f"{r['epoch_s']:.3f}",
            f"{r.get('epoch_time_vs_plain', 1.0):.2f}",
            f"{r['val_accuracy']:.4f}",
        )
    Console().print(table)
    Console().print(f"kiln train → first epoch: {results['kiln_train_to_first_epoch_s']:.1f} s")
