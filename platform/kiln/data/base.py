"""What every dataset builder returns (arrays split into train and validation, and the
`DataSchema` of what goes in and comes out), and the dataset registry.

A builder takes (task, val_fraction, seed) and keyword-only params; one that reads a file takes
`path`, which a spec gives as `data.path` (not in `params`), and one that can stream takes
`streaming` (`data.streaming`) and may return a kiln.data.stream.StreamedDataset."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.builders import Builders
from kiln.errors import DataError
from kiln.schema import DataSchema


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    schema: DataSchema
    baselines: dict[str, float] = field(default_factory=dict)  # e.g. seasonal-naive val MAE
    extras: dict[str, Any] = field(default_factory=dict)  # what a task's evaluation needs

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val):
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()


DATASETS: Builders[Callable[..., Any]] = Builders(
    "dataset", reserved=("path", "streaming", "val_path")
)


def shuffled_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation indices: the same seed gives the same split everywhere."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise DataError(f"{n} examples are too few to split with val_fraction={val_fraction}")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def classification(
    x: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, **schema: Any
) -> Dataset:
    """Split a labelled array; labels may be any values and are mapped to class indices."""
    classes, y = np.unique(labels, return_inverse=True)
    train, val = shuffled_split(len(x), val_fraction, seed)
    return Dataset(
        x[train],
        y[train].astype(np.int64),
        x[val],
        y[val].astype(np.int64),
        DataSchema(
            task="classification",
            input_shape=list(x.shape[1:]),
            output_dim=len(classes),
            classes=[str(c) for c in classes],
            **{"input_dtype": str(x.dtype), **schema},
        ),
    )


def require_task(dataset: str, task: str, supported: tuple[str, ...]) -> None:
    if task not in supported:
        raise DataError(
            f"{dataset} is a {' or '.join(supported)} dataset; the job's task is {task}"
        )
