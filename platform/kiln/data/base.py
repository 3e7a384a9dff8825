"""What every dataset builder returns: arrays split into train and validation, and a schema
that tells the model (and later the server) what goes in and what comes out."""

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kiln.errors import DataError


@dataclass
class DataSchema:
    task: str
    input_shape: list[int]  # one example, without the batch dimension
    input_dtype: str  # "float32", or "int64" for token ids
    output_dim: int  # classes, or values to predict
    classes: list[str] | None = None
    vocab_size: int | None = None
    # Forecasting targets are scaled for training; metrics are reported in the data's own units.
    target_scale: float = 1.0
    # How raw inputs become model inputs (JSON): standardisation, a vocabulary, offsets.
    transform: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
