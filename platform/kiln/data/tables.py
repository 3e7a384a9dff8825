"""Tabular datasets: scikit-learn's bundled breast-cancer table, and the user's own tables."""

import numpy as np
from sklearn.datasets import load_breast_cancer

from kiln.data.base import DATASETS, Dataset, classification, require_task, shuffled_split
from kiln.data.files import read_table
from kiln.errors import DataError
from kiln.schema import DataSchema


@DATASETS.register("breast_cancer")
def breast_cancer(task: str, val_fraction: float, seed: int) -> Dataset:
    """Wisconsin diagnostic breast cancer: 569 patients, 30 features, malignant or benign."""
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
    delimiter: str | None = None,
) -> Dataset:
    """Your own CSV or Parquet table. `features` defaults to every other numeric column;
    `image_shape` (e.g. [1, 28, 28]) reshapes each row's features into an image."""
    require_task("table", task, ("classification", "regression"))
    frame = read_table(path, delimiter=delimiter)
    if label not in frame.columns:
        raise DataError(f"{path} has no column {label!r}; columns: {', '.join(frame.columns)}")
    columns = features or [c for c in frame.select_dtypes("number").columns if c != label]
    missing = sorted(set(columns) - set(frame.columns))
    if missing or not columns:
        raise DataError(f"{path}: feature columns not found: {', '.join(missing) or '(none)'}")
    x = frame[columns].to_numpy(np.float32)
    if image_shape:
        if int(np.prod(image_shape)) != x.shape[1]:
            raise DataError(f"image_shape {image_shape} needs {int(np.prod(image_shape))} columns")
        x = x.reshape(len(x), *image_shape)
    labels = frame[label].to_numpy()
    if task == "classification":
        data = classification(x, labels, val_fraction, seed)
    else:
        data = _regression(x, labels.astype(np.float32), val_fraction, seed)
    return data if image_shape else standardize(data, feature_names=columns)


def _regression(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> Dataset:
    train, val = shuffled_split(len(x), val_fraction, seed)
    schema = DataSchema("regression", list(x.shape[1:]), "float32", output_dim=1)
    return Dataset(x[train], y[train, None], x[val], y[val, None], schema)


def standardize(data: Dataset, feature_names: list[str]) -> Dataset:
    """Scale features by the training split's mean and std (never the validation split's)."""
    mean = data.x_train.mean(axis=0)
    std = data.x_train.std(axis=0) + 1e-6
    data.x_train = ((data.x_train - mean) / std).astype(np.float32)
    data.x_val = ((data.x_val - mean) / std).astype(np.float32)
    data.schema.transform = {
        "standardize": {"features": feature_names, "mean": mean.tolist(), "std": std.tolist()}
    }
    return data
