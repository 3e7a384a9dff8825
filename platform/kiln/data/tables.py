"""Tabular datasets: scikit-learn's bundled breast-cancer table, and the user's own tables,
in memory or streamed (kiln.data.stream) by size."""

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import PositiveInt

from kiln import preprocess
from kiln.data.base import DATASETS, Dataset, classification, require_task
from kiln.data.files import read_table
from kiln.data.shards import CsvDialect, Shards
from kiln.data.stream import (
    StreamedDataset,
    class_indices,
    columns_read,
    in_memory,
    labels_of,
    merged_labels,
    merged_moments,
    present_labels,
    should_stream,
    stream,
)
from kiln.errors import DataError
from kiln.schema import DataSchema


@dataclass
class TableLayout:
    """A table's rows as feature vectors (numbers standardised by the training rows' mean and
    std, text columns one-hot over their training values) or images (`image_shape`), and a
    class or a value to predict."""

    task: str  # classification or regression
    label: str
    features: list[str]
    classes: list[Any] | None = None  # the label's values, sorted: class i is classes[i]
    image_shape: list[int] | None = None  # each row's features reshaped, e.g. [1, 28, 28]
    transform: dict[str, Any] = field(default_factory=dict)  # kiln.preprocess's
    texts: list[str] = field(default_factory=list)  # the features that are text (categorical)
    max_categories: int = 64  # a text column's most frequent values; the rest share a slot

    @property
    def columns(self) -> list[str]:
        return [*self.features, self.label]

    @property
    def numbers(self) -> list[str]:
        return [f for f in self.features if f not in self.texts]

    def summary(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per numeric feature: the count of its present values, their mean and sum of
        squared deviations (M2); per text feature, its values' counts; and the labels."""
        x = self.raw_numbers(frame).astype(np.float64)
        present = ~np.isnan(x)
        count = present.sum(axis=0)
        mean = np.where(present, x, 0.0).sum(axis=0) / np.maximum(count, 1)
        m2 = np.where(present, (x - mean) ** 2, 0.0).sum(axis=0)
        classifies = self.task == "classification"
        labels = labels_of(frame, self.label) if classifies else np.array(["[]"])
        y = present_labels(
            frame, self.label
        )  # a row without its label fails the fit, before any training
        y = y.astype(np.float64) if not classifies else np.zeros(0)
        y_mean = y.mean() if len(y) else 0.0
        texts = {name: value_counts(frame[name]) for name in self.texts}
        return {
            "count": count[None],
            "mean": mean[None],
            "m2": m2[None],
            "classes": labels,
            "texts": np.array([json.dumps(texts)]),
            "target_mean": np.array([y_mean]),
            "target_m2": np.array([((y - y_mean) ** 2).sum()]),
        }

    def fitted(self, summaries: list[dict[str, Any]]) -> "TableLayout":
        """Standardised by the merged means and M2s (unless the rows are images), text
        columns by their most frequent values."""
        count, mean, m2 = merged_moments(summaries)
        transform = dict(self.transform)
        if not self.image_shape:
            if empty := [f for f, n in zip(self.numbers, count, strict=True) if n == 0]:
                raise DataError(f"feature column {empty[0]!r} has no value in the training rows")
            std = np.sqrt(m2 / np.maximum(count, 1))
            rule = preprocess.standardization(mean, std, self.numbers)
            transform = {"standardize": rule} if self.numbers else {}
        if self.texts:
            transform["categories"] = self._categories(summaries)
        if self.task != "classification":  # a value to predict: trained on its z-score
            moments = merged_moments(summaries, prefix="target_")
            rows, target_mean, target_m2 = (float(np.ravel(m)[0]) for m in moments)
            std = float(np.sqrt(target_m2 / max(rows, 1)))
            transform["target"] = {"mean": target_mean, "std": std or 1.0}
        classes = merged_labels(summaries) if self.task == "classification" else None
        return replace(self, classes=classes, transform=transform)

    def _categories(self, summaries: list[dict[str, Any]]) -> dict[str, list[str]]:
        counts: dict[str, Counter[str]] = {name: Counter() for name in self.texts}
        for part in summaries:
            for name, seen in json.loads(part["texts"]).items():
                counts[name].update(seen)
        return {
            name: sorted(c, key=lambda v: (-c[v], v))[: self.max_categories]
            for name, c in counts.items()
        }

    def raw_numbers(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, numeric features) float32, a missing or infinite value as NaN (the training
        mean, once standardised: kiln.preprocess)."""
        x = frame[self.numbers].to_numpy(np.float32, na_value=np.nan)
        if not x.flags.writeable:  # pandas' copy-on-write view of float32 columns stored together
            x = x.copy()
        x[np.isinf(x)] = np.nan
        return x

    def tensors(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        if self.texts:
            x = preprocess.table_rows(self.transform, {f: frame[f] for f in self.features})
        else:
            x = preprocess.features(self.transform, self.raw_numbers(frame))
        if self.image_shape:
            x = x.reshape(len(x), *self.image_shape)
        values = present_labels(frame, self.label)
        if self.task != "classification":
            target = self.transform["target"]
            y = (values.astype(np.float64) - target["mean"]) / target["std"]
            return {"x": x, "y": y.astype(np.float32)[:, None]}
        assert self.classes is not None, "fit the layout first"
        return {"x": x, "y": class_indices(values, self.classes, self.label)}

    def schema(self) -> DataSchema:
        width = len(self.numbers) + sum(
            len(known) + 1 for known in self.transform.get("categories", {}).values()
        )
        shape = self.image_shape or [width]
        if self.task == "classification":
            assert self.classes is not None
            classes = [str(c) for c in self.classes]
            return DataSchema(
                "classification", shape, "float32", len(classes), classes, transform=self.transform
            )
        scale = self.transform["target"]["std"]
        return DataSchema(
            "regression", shape, "float32", 1, target_scale=scale, transform=self.transform
        )


def value_counts(column: pd.Series) -> dict[str, int]:
    """A text column's values (True as "True") and how often each comes; missing and empty
    ones are not values."""
    texts = column.dropna().astype(str)
    return {k: int(v) for k, v in texts[texts.str.strip() != ""].value_counts().items()}


@DATASETS.register("breast_cancer", imports=("sklearn.datasets",))
def breast_cancer(task: str, val_fraction: float, seed: int) -> Dataset:
    """Wisconsin diagnostic breast cancer: 569 patients, 30 features, malignant or benign."""
    from sklearn.datasets import load_breast_cancer  # here: Ray Data's workers import this module

    require_task("breast_cancer", task, ("classification",))
    bunch = load_breast_cancer()
    data = classification(bunch.data.astype(np.float32), bunch.target, val_fraction, seed)
    data.schema.classes = [str(n) for n in bunch.target_names]
    return standardize(data, feature_names=list(bunch.feature_names))


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
    csv: CsvDialect = CsvDialect(),
    split_key: str | None = None,
    streaming: bool | Literal["auto"] = "auto",
    max_categories: PositiveInt = 64,
    val_path: str | None = None,
) -> Dataset | StreamedDataset:
    """Your own CSV or Parquet table (a file, a folder of part files or a glob). `features`
    defaults to every other column of numbers (decimals too) or text. A missing (or infinite)
    number is the feature's training mean, in training and in serving; a text column is categorical,
    one-hot over its `max_categories` most frequent training values, with one more slot for
    any other value or none; a row without its label is an error. `image_shape` (e.g.
    [1, 28, 28]) reshapes each row's numbers into an image. Validation rows are chosen by a
    seeded hash of the row, or of the `split_key` column (all rows of a key on one side).
    Larger tables stream. A CSV may separate fields by another `csv.delimiter` (`;`), mark
    decimals by another `csv.decimal` (`,`), be in another `csv.encoding` (`latin-1`), and
    mark a missing value otherwise than pyarrow knows (`csv.missing: ["?"]`)."""
    require_task("table", task, ("classification", "regression"))
    shards = Shards.open(path, csv)
    layout = _layout(shards, task, label, features, image_shape, split_key, max_categories)
    shards = shards.reading_floats(layout.numbers)
    val = shards.validation(val_path, layout.columns)
    if should_stream(streaming, shards.bytes + (val.bytes if val else 0)):
        return stream(shards, layout, val_fraction, seed, split_key, val)
    frame = read_table(shards, columns=columns_read(layout, split_key))
    val_frame = read_table(val, columns=layout.columns) if val else None
    data = in_memory(frame, layout, val_fraction, seed, split_key, path, val_frame)
    if task == "regression":
        data.baselines = mean_baseline(data.y_val, data.schema.target_scale)
    return data


def mean_baseline(y_val: np.ndarray, scale: float) -> dict[str, float]:
    """The errors of predicting the training mean (0, as a z-score) for every validation row,
    in the label's units: the regressor's baseline to beat."""
    return {
        "mean_val_mae": float(np.abs(y_val).mean() * scale),
        "mean_val_rmse": float(np.sqrt((y_val.astype(np.float64) ** 2).mean()) * scale),
    }


def _layout(
    shards: Shards,
    task: str,
    label: str,
    features: list[str] | None,
    image_shape: list[int] | None,
    split_key: str | None,
    max_categories: int,
) -> TableLayout:
    """The columns a table job reads, checked against the shards' schema before any read;
    the features default to every column of numbers or text but the label and the split's
    key."""
    shards.require([label, *([split_key] if split_key else [])])
    usable = [f.name for f in shards.schema if f.name not in (label, split_key) and _kind(f)]
    columns = features or usable
    if not columns:
        raise DataError(f"{shards.path}: no feature columns of numbers or text beside {label!r}")
    shards.require(columns)
    kinds = {name: _kind(shards.schema.field(name)) for name in columns}
    if unusable := [name for name, kind in kinds.items() if kind is None]:
        raise DataError(
            f"{shards.path}: feature column {unusable[0]!r} holds "
            f"{shards.schema.field(unusable[0]).type} values; a table's features are numbers "
            "or text: leave it out of data.params.features"
        )
    texts = [name for name, kind in kinds.items() if kind == "text"]
    if image_shape and texts:
        raise DataError(f"image_shape takes numbers; {texts[0]!r} holds text")
    if image_shape and int(np.prod(image_shape)) != len(columns):
        raise DataError(f"image_shape {image_shape} needs {int(np.prod(image_shape))} columns")
    return TableLayout(
        task, label, columns, image_shape=image_shape, texts=texts, max_categories=max_categories
    )


def _kind(column: pa.Field) -> str | None:
    """ "number", "text" (a categorical feature) or None (a type no feature can be)."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if any(is_type(kind) for is_type in NUMBER_TYPES):
        return "number"
    return "text" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else None


# null: a CSV column whose first rows are empty (its type is read from them); decimal: what
# databases and Spark export for money and measures (DECIMAL(12, 2)), read as floats.
NUMBER_TYPES = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_boolean,
    pa.types.is_null,
)


def standardize(data: Dataset, feature_names: list[str]) -> Dataset:
    """Scale features by the training split's mean and std (never the validation split's)."""
    x = data.x_train.astype(np.float64)
    rule = preprocess.standardization(x.mean(axis=0), x.std(axis=0), feature_names)
    data.schema.transform = {"standardize": rule}
    data.x_train = preprocess.features(data.schema.transform, data.x_train)
    data.x_val = preprocess.features(data.schema.transform, data.x_val)
    return data
