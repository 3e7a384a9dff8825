"""Tabular datasets: scikit-learn's bundled breast-cancer table, and the user's own tables,
in memory or streamed (kiln.data.stream) by size."""

from typing import Literal

import numpy as np
import pyarrow as pa

from kiln import preprocess
from kiln.data.base import DATASETS, Dataset, classification, require_task
from kiln.data.files import read_table
from kiln.data.shards import Shards
from kiln.data.stream import StreamedDataset, TableLayout, in_validation, stream_table
from kiln.errors import DataError


@DATASETS.register("breast_cancer")
def breast_cancer(task: str, val_fraction: float, seed: int) -> Dataset:
    """Wisconsin diagnostic breast cancer: 569 patients, 30 features, malignant or benign."""
    from sklearn.datasets import load_breast_cancer  # here: Ray Data's workers import this module

    require_task("breast_cancer", task, ("classification",))
    bunch = load_breast_cancer()
    data = classification(bunch.data.astype(np.float32), bunch.target, val_fraction, seed)
    data.schema.classes = [str(n) for n in bunch.target_names]
    return standardize(data, feature_names=list(bunch.feature_names))


STREAM_ABOVE_BYTES = 256 * 2**20  # `streaming: auto` streams tables larger than this on disk


@DATASETS.register("table")
def table(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str,
    label: str,
    features: list[str] | None = None,
    image_shape: list[int] | None = None,
    delimiter: str | None = None,
    split_key: str | None = None,
    streaming: bool | Literal["auto"] = "auto",
) -> Dataset | StreamedDataset:
    """Your own CSV or Parquet table (a file, a folder of part files or a glob). `features`
    defaults to every other numeric column; `image_shape` (e.g. [1, 28, 28]) reshapes each
    row's features into an image. Validation rows are chosen by a seeded hash of the row, or
    of the `split_key` column (all rows of a key on one side). Larger tables stream."""
    require_task("table", task, ("classification", "regression"))
    shards = Shards.open(path, delimiter)
    layout = _layout(shards, task, label, features, image_shape)
    if streaming is True or (streaming == "auto" and shards.bytes > STREAM_ABOVE_BYTES):
        return stream_table(shards, layout, val_fraction, seed, split_key)
    frame = read_table(shards, columns=layout.columns)
    val = in_validation(frame, val_fraction, seed, split_key)
    train_rows, val_rows = frame[~val], frame[val]
    if train_rows.empty or val_rows.empty:
        raise DataError(f"{path}: {len(frame)} rows are too few to split at {val_fraction}")
    if task == "classification":
        layout.classes = sorted(train_rows[label].dropna().unique().tolist())
    a, b = layout.tensors(train_rows), layout.tensors(val_rows)
    data = Dataset(a["x"], a["y"], b["x"], b["y"], layout.schema())
    return data if image_shape else standardize(data, feature_names=layout.features)


def _layout(
    shards: Shards,
    task: str,
    label: str,
    features: list[str] | None,
    image_shape: list[int] | None,
) -> TableLayout:
    """The columns a table job reads, checked against the shards' schema before any read."""
    shards.require([label])
    numeric = [
        f.name
        for f in shards.schema
        if f.name != label and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]
    columns = features or numeric
    if not columns:
        raise DataError(f"{shards.path}: no numeric feature columns beside {label!r}")
    shards.require(columns)
    if image_shape and int(np.prod(image_shape)) != len(columns):
        raise DataError(f"image_shape {image_shape} needs {int(np.prod(image_shape))} columns")
    return TableLayout(task, label, columns, image_shape=image_shape)


def standardize(data: Dataset, feature_names: list[str]) -> Dataset:
    """Scale features by the training split's mean and std (never the validation split's)."""
    x = data.x_train.astype(np.float64)
    rule = preprocess.standardization(x.mean(axis=0), x.std(axis=0), feature_names)
    data.schema.transform = {"standardize": rule}
    data.x_train = preprocess.features(data.schema.transform, data.x_train)
    data.x_val = preprocess.features(data.schema.transform, data.x_val)
    return data
