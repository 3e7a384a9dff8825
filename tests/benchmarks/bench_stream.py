"""Streamed training against a plain PyTorch loop over the same Parquet table.

    python -m tests.benchmarks stream      # KILN_BENCH_STREAM_ROWS=20000000 by default

One run: a generated table (32 float features and a label, `tests.data.generated`, written
once and cached under bench-results/), one epoch of the same MLP:
- plain: one process reading the files with pyarrow batches, no Ray;
- Kiln, streamed, on 1 and on 2 workers: `run_job` in a Ray cluster of its own (the child
  process `tests.data.streamed_job`), the driver's and each worker's peak RSS and the object
  store's peak use (/dev/shm, where Ray's plasma store lives) sampled from outside.
Rows per second are of the training pass alone (Kiln's `train_rows_per_s`: all workers'
rows over their mean time in the training loop; validation is not counted), and again without
the wait for the first batch (the pipeline's start: worker processes, listing, the first read).
Both sides train the same MLP with the same step (AdamW, no dropout, no clipping); the plain
loop runs on all cores and again on one thread, as a Train worker holding one CPU does.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch
from torch import nn

from tests.data.generated import FEATURES, write_table

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-results" / "stream.json"
BATCH, HIDDEN, LR = 1024, [64, 64], 0.003


def main() -> None:
    rows = int(os.environ.get("KILN_BENCH_STREAM_ROWS", 20_000_000))
    folder = cached_table(rows)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    results: dict = {"rows": rows, "files": len(list(folder.glob("*.parquet"))), "bytes": size}
    print(f"{rows:,} rows in {results['files']} files, {size / 2**30:.2f} GiB", flush=True)
    record(results, "plain", plain_loop(folder))
    results["plain"]["torch_threads"] = threads = torch.get_num_threads()
    # A Train worker holding one CPU runs torch on one thread (Ray sets OMP_NUM_THREADS).
    torch.set_num_threads(1)
    record(results, "plain_1_thread", plain_loop(folder))
    torch.set_num_threads(threads)
    for workers in (1, 2):
        record(results, f"kiln_{workers}_workers", streamed(folder, workers))
    plain = results["plain"]["rows_per_s"]
    for workers in (1, 2):
        run = results[f"kiln_{workers}_workers"]
        run["rows_per_s_per_worker_vs_plain"] = run["rows_per_s"] / workers / plain
        after_start = run["rows_per_s_after_first_batch"] / workers
        run["after_first_batch_per_worker_vs_plain"] = after_start / plain
        one_thread = results["plain_1_thread"]["rows_per_s"]
        run["after_first_batch_per_worker_vs_plain_1_thread"] = after_start / one_thread
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def record(results: dict, name: str, figures: dict) -> None:
    """One run's figures, printed as they come: a run cut short keeps what it measured."""
    results[name] = figures
    print(name, json.dumps(figures), flush=True)


def cached_table(rows: int) -> Path:
    return cached(
        f"stream-table-{rows}",
        lambda folder: write_table(folder, rows=rows, files=max(1, rows // 200_000)),
    )


def cached(name: str, write: Callable[[Path], object]) -> Path:
    """bench-results/NAME, written by `write` once (a run cut short writes it again)."""
    folder = ROOT / "bench-results" / name
    if not (folder / "DONE").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write(folder)
        (folder / "DONE").write_text("")
    return folder


def mlp() -> nn.Module:
    layers: list[nn.Module] = []
    width = FEATURES
    for hidden in HIDDEN:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 2))


def plain_loop(folder: Path) -> dict:
    """The baseline: pyarrow batches straight into one model in one process."""
    torch.manual_seed(0)
    model, criterion = mlp(), nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    columns = [f"f{i}" for i in range(FEATURES)]
    rows, started = 0, time.perf_counter()
    for path in sorted(folder.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            x = torch.from_numpy(np.stack([batch.column(c).to_numpy() for c in columns], 1))
            y = torch.from_numpy(batch.column("label").to_numpy())
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows += len(y)
    seconds = time.perf_counter() - started
    rss = psutil.Process().memory_info().rss
    return {"rows_per_s": rows / seconds, "seconds": seconds, "peak_rss_mb": rss / 2**20}


def streamed(folder: Path, workers: int) -> dict:
    spec = {
        "name": f"bench-stream-{workers}",
        "task": "classification",
        "data": {
            "name": "table",
            "path": str(folder),
            "params": {"label": "label"},
            "streaming": True,
        },
        # The plain loop's model and step: no dropout, no gradient clipping, AdamW.
        "model": {"family": "mlp", "params": {"hidden": HIDDEN, "dropout": 0}},
        "train": {
            "epochs": 1,
            "batch_size": BATCH * workers,
            "optimizer": {"name": "adamw", "lr": LR},
            "grad_clip": None,
        },
        "scaling": {"num_workers": workers},
        "register": None,
    }
    spec_file = ROOT / "bench-results" / "stream-spec.json"
    spec_file.write_text(json.dumps(spec))
    home = ROOT / "bench-results" / "stream-home"
    result, peaks, wall_s = measured_child(
        ["tests.data.streamed_job", str(spec_file), "2048", str(os.cpu_count() or 2)],
        env={"KILN_HOME": str(home), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"},
    )
    metrics = result["outcome"]["metrics"]
    train_s = metrics["train_rows"] / metrics["train_rows_per_s"]  # each worker's, on average
    return {
        "rows_per_s": metrics["train_rows_per_s"],
        # Once the pipeline has started: without the wait for the first batch.
        "rows_per_s_after_first_batch": metrics["train_rows"]
        / (train_s - metrics["input_first_batch_s"]),
        "first_batch_s": metrics["input_first_batch_s"],
        "input_wait_s": metrics["input_wait_s"],
        "epoch_time_s": metrics["epoch_time_s"],
        "wall_s": wall_s,
        "val_accuracy": metrics["val_accuracy"],
        "train_rows": metrics["train_rows"],
        "train_rows_dropped": metrics["train_rows_dropped"],
        "driver_peak_rss_mb": peaks.driver / 2**20,
        "worker_peak_rss_mb": [v / 2**20 for v in peaks.workers.values()],
        "object_store_peak_mb": peaks.store / 2**20,
    }


def measured_child(module_args: list[str], env: dict | None = None) -> tuple[dict, "Peaks", float]:
    """`python -m MODULE ARGS` with its peaks sampled from outside: the last line it prints
    (JSON), the peaks and the wall time."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    peaks = Peaks(child.pid)
    peaks.start()
    out, _ = child.communicate()
    peaks.stop.set()
    peaks.join()
    return json.loads(out.strip().splitlines()[-1]), peaks, time.perf_counter() - started


class Peaks(threading.Thread):
    """Peak RSS of the driver and of each Train worker, and /dev/shm in use, every second."""

    def __init__(self, driver_pid: int):
        super().__init__(daemon=True)
        self.driver_process = psutil.Process(driver_pid)
        self.driver, self.store = 0, 0
        self.workers: dict[int, int] = {}
        self.stop = threading.Event()
        self.shm_before = shutil.disk_usage("/dev/shm").used

    def run(self) -> None:
        while not self.stop.wait(1.0):  # psutil over every process costs CPU: once a second
            with contextlib.suppress(psutil.Error):
                self.driver = max(self.driver, self.driver_process.memory_info().rss)
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"):
                    rss = p.info["memory_info"].rss if p.info["memory_info"] else 0
                    self.workers[p.pid] = max(self.workers.get(p.pid, 0), rss)
            self.store = max(self.store, shutil.disk_usage("/dev/shm").used - self.shm_before)


if __name__ == "__main__":
    main()
