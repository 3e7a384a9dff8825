"""Time series windowed for forecasting: the real CO2 record that ships with statsmodels, and
any numeric column of the user's CSV.

A window of `window` past values predicts the next `horizon` values. Each window is expressed
relative to its last value and divided by the spread of one-step changes in the training part,
so the model learns the shape of what comes next rather than the level (which drifts: CO2 rises
every year and validation lies after training in time)."""

import numpy as np
import pandas as pd

from kiln.data.base import DATASETS, Dataset, require_task
from kiln.data.files import read_table
from kiln.data.shards import CsvDialect, Shards
from kiln.data.stream import time_order
from kiln.errors import DataError
from kiln.schema import DataSchema


@DATASETS.register("co2", imports=("statsmodels.api",))
def co2(
    task: str, val_fraction: float, seed: int, *, window: int = 24, horizon: int = 1
) -> Dataset:
    """Mauna Loa atmospheric CO2 (ppm), 1958-2001, as monthly means; seasonality 12."""
    import statsmodels.api as sm

    require_task("co2", task, ("forecasting",))
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate()
    return windowed(monthly.to_numpy(np.float64), window, horizon, val_fraction, season=12)


@DATASETS.register("csv_series")
def csv_series(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str,
    column: str,
    time_column: str | None = None,
    window: int = 24,
    horizon: int = 1,
    season: int = 12,
    csv: CsvDialect = CsvDialect(),
) -> Dataset:
    """One numeric column of a CSV or Parquet file, ordered by `time_column` if given."""
    require_task("csv_series", task, ("forecasting",))
    shards = Shards.open(path, csv)
    frame = read_table(shards.reading_floats([column] if column in shards.schema.names else []))
    for name in filter(None, [column, time_column]):
        if name not in frame.columns:
            raise DataError(f"{path} has no column {name!r}; columns: {', '.join(frame.columns)}")
    if time_column:
        where = f"{path}: time column {time_column!r}"
        frame = frame.iloc[np.argsort(time_order(frame[time_column], where), kind="stable")]
    values = pd.to_numeric(frame[column], errors="coerce").interpolate().dropna()
    return windowed(values.to_numpy(np.float64), window, horizon, val_fraction, season)


def windowed(
    series: np.ndarray, window: int, horizon: int, val_fraction: float, season: int
) -> Dataset:
    n_windows = len(series) - window - horizon + 1
    if window < 1 or horizon < 1 or n_windows < 10:
        raise DataError(f"{len(series)} values are too few for window={window}, horizon={horizon}")
    starts = np.arange(n_windows)
    inputs = series[starts[:, None] + np.arange(window)]  # (N, window)
    targets = series[starts[:, None] + window + np.arange(horizon)]  # (N, horizon)
    n_val = max(1, round(n_windows * val_fraction))  # chronological: validation comes last
    split = n_windows - n_val
    scale = float(np.std(np.diff(series[: split + window])) or 1.0)
    last = inputs[:, -1:]
    x = ((inputs - last) / scale).astype(np.float32)[..., None]  # (N, window, 1)
    y = ((targets - last) / scale).astype(np.float32)
    schema = DataSchema(
        task="forecasting",
        input_shape=[window, 1],
        input_dtype="float32",
        output_dim=horizon,
        target_scale=scale,
        transform={"offset": "last_value", "scale": scale, "season": season},
    )
    data = Dataset(x[:split], y[:split], x[split:], y[split:], schema)
    data.baselines = seasonal_naive(inputs[split:], targets[split:], season)
    return data


def seasonal_naive(inputs: np.ndarray, targets: np.ndarray, season: int) -> dict[str, float]:
    """Predict each value by the one a season earlier (the forecaster's baseline to beat)."""
    window, horizon = inputs.shape[1], targets.shape[1]
    if season > window:
        return {}
    history = np.concatenate([inputs, targets], axis=1)
    steps = window + np.arange(horizon)
    predictions = history[:, steps - season]
    errors = predictions - targets
    return {
        "seasonal_naive_val_mae": float(np.abs(errors).mean()),
        "seasonal_naive_val_rmse": float(np.sqrt((errors**2).mean())),
    }
