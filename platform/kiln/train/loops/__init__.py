"""Per-worker training loops. Each module has `train_loop_per_worker(config)`; a task names
its loop (`kiln.tasks`), and may name a driver-side `prepare(spec, dataset) -> dict` whose
result every worker receives (in `config["extras"]`), such as the GAN's evaluation classifier.

The trainer is handed `train_loop_per_worker` below, which imports the task's loop on the
worker: the loops import torch (a second of CPU), and the driver, or a search's trial that
only builds the trainer, has no use for it."""

import importlib
from typing import Any

from kiln import tasks
from kiln.builders import import_object
from kiln.data import Dataset, StreamedDataset
from kiln.spec import JobSpec


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The task's loop, run by each worker (`config["spec"]` is the job spec as JSON)."""
    loop = importlib.import_module(tasks.get(config["spec"]["task"]).loop)
    loop.train_loop_per_worker(config)


def prepare(spec: JobSpec, dataset: Dataset | StreamedDataset) -> dict[str, Any]:
    """The task's driver-side preparation, if it has one: what every worker gets as extras."""
    path = tasks.get(spec.task).prepare
    return import_object(path)(spec, dataset) if path else {}
