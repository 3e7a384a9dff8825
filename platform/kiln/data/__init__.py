"""Datasets, by name, with deterministic seeded splits.

    data = build(spec.data, task="classification")   # a Dataset: arrays + schema

Workers are fed with `ray.train.torch.prepare_data_loader` over in-memory tensors that the
driver builds once and puts in Ray's object store: every dataset here fits in memory, every
rank sees the same split and vocabulary, and each epoch has a fixed number of batches, so all
ranks reach `ray.train.report` together. Files are read through Ray Data (`files.read_table`).
"""

import inspect
from typing import Any, Protocol

from kiln.data import images, interactions, series, tables, text  # noqa: F401  (registers the builders)
from kiln.data.base import DATASETS, Dataset
from kiln.data.files import check_exists
from kiln.errors import DataError, SpecError

__all__ = ["DATASETS", "DataSpec", "Dataset", "build", "check"]


class DataSpec(Protocol):
    """What a job spec's `data` section says (kiln.spec.DataSpec has these fields)."""

    name: str
    path: str | None
    params: dict[str, Any]
    val_fraction: float
    seed: int


def check(spec: DataSpec) -> None:
    """Names, params and the file are valid; nothing is read."""
    try:
        DATASETS.get(spec.name)
    except SpecError as e:
        raise SpecError(str(e), field="data.name") from None
    DATASETS.validate_params(spec.name, spec.params)
    takes_path = DATASETS.accepts(spec.name, "path")
    if spec.path is None:
        if takes_path is not None and takes_path.default is inspect.Parameter.empty:
            raise DataError(f"dataset {spec.name} reads a file: give data.path", field="data.path")
        return
    if takes_path is None:
        raise DataError(f"dataset {spec.name} does not read files", field="data.path")
    try:
        check_exists(spec.path)
    except DataError as e:
        raise DataError(str(e), field="data.path") from None


def build(spec: DataSpec, task: str) -> Dataset:
    builder = DATASETS.get(spec.name)
    params = DATASETS.validate_params(spec.name, spec.params)
    if spec.path is not None:
        params["path"] = spec.path
    return builder(task, spec.val_fraction, spec.seed, **params)
