"""Datasets, by name, with deterministic seeded splits.

    data = build(spec.data, task="classification")   # a Dataset, or a StreamedDataset

Two ways to the workers:
- in memory (`Dataset`: arrays + schema): the driver builds the arrays once and puts them in
  Ray's object store; each worker takes its share through a DistributedSampler. Right for the
  built-in datasets and for files of up to a few hundred MB.
- streamed (`StreamedDataset`, kiln.data.stream): Ray Data reads the files and each worker
  iterates its own shard (`ray.train.get_dataset_shard`); nothing is materialised on the
  driver. `table` and `text_csv` stream when `data.streaming` is true, or when it is `auto`
  (the default) and the files exceed `stream.STREAM_ABOVE_BYTES`.
Either way every rank takes the same number of steps per epoch, so all reach
`ray.train.report` together.
"""

import inspect
from typing import Any, Literal, Protocol

from kiln.data import images, interactions, series, speech, tables, text  # noqa: F401  (registers the builders)
from kiln.data.base import DATASETS, Dataset
from kiln.data.files import check_exists
from kiln.data.stream import StreamedDataset
from kiln.errors import DataError, SpecError

__all__ = [
    "DATASETS",
    "DataSpec",
    "Dataset",
    "StreamedDataset",
    "build",
    "check",
    "imports",
    "streams",
]


class DataSpec(Protocol):
    """What a job spec's `data` section says (kiln.spec.DataSpec has these fields)."""

    name: str
    path: str | None
    val_path: str | None
    params: dict[str, Any]
    val_fraction: float
    seed: int
    streaming: bool | Literal["auto"]


def check(spec: DataSpec) -> None:
    """Names, params and the file are valid; nothing is read."""
    try:
        DATASETS.get(spec.name)
    except SpecError as e:
        raise SpecError(str(e), field="data.name") from None
    DATASETS.validate_params(spec.name, spec.params)
    if spec.streaming is True and not streams(spec.name):
        known = ", ".join(n for n in DATASETS.names() if streams(n))
        raise DataError(
            f"dataset {spec.name} is read in memory; datasets that stream: {known}",
            field="data.streaming",
        )
    if spec.val_path is not None:
        _check_val_path(spec.name, spec.val_path)
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


def _check_val_path(name: str, val_path: str) -> None:
    if DATASETS.accepts(name, "val_path") is None:
        known = ", ".join(n for n in DATASETS.names() if DATASETS.accepts(n, "val_path"))
        raise DataError(
            f"dataset {name} takes no validation files; datasets that do: {known}",
            field="data.val_path",
        )
    try:
        check_exists(val_path)
    except DataError as e:
        raise DataError(str(e), field="data.val_path") from None


def streams(name: str) -> bool:
    return DATASETS.accepts(name, "streaming") is not None


def imports(spec: DataSpec) -> tuple[str, ...]:
    """The heavy modules building the dataset imports (scikit-learn for its datasets): a CLI
    imports them while Ray starts, 0.9 s before `kiln train jobs/digits-cnn.yaml` trains."""
    return DATASETS.imports(spec.name)


def build(spec: DataSpec, task: str) -> Dataset | StreamedDataset:
    builder = DATASETS.get(spec.name)
    params = DATASETS.validate_params(spec.name, spec.params)
    if spec.path is not None:
        params["path"] = spec.path
    if spec.val_path is not None:
        params["val_path"] = spec.val_path
    if streams(spec.name):
        params["streaming"] = spec.streaming
    return builder(task, spec.val_fraction, spec.seed, **params)
