"""Datasets, by name, with deterministic seeded splits.

    data = build(spec.data, task="classification")   # a Dataset: arrays + schema

Workers are fed with `ray.train.torch.prepare_data_loader` over in-memory tensors that the
driver builds once and puts in Ray's object store: every dataset here fits in memory, every
rank sees the same split and vocabulary, and each epoch has a fixed number of batches, so all
ranks reach `ray.train.report` together. Files are read through Ray Data (`files.read_table`).
"""

from kiln.data import images, series, tables, text  # noqa: F401  (registers the builders)
from kiln.data.base import DataSchema, Dataset
from kiln.data.files import check_exists
from kiln.data.registry import DATASETS
from kiln.errors import DataError, SpecError
from kiln.spec import DataSpec

__all__ = ["DATASETS", "DataSchema", "Dataset", "build", "check"]


def check(spec: DataSpec) -> None:
    """Names and params are valid and local files exist; nothing is read."""
    try:
        DATASETS.get(spec.name)
    except SpecError as e:
        raise SpecError(str(e), field="data.name") from None
    params = DATASETS.validate_params(spec.name, spec.params)
    if params.get("path"):
        try:
            check_exists(params["path"])
        except DataError as e:
            raise DataError(str(e), field="data.params.path") from None


def build(spec: DataSpec, task: str) -> Dataset:
    builder = DATASETS.get(spec.name)
    params = DATASETS.validate_params(spec.name, spec.params)
    return builder(task, spec.val_fraction, spec.seed, **params)
