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
    return windowed([monthly.to_numpy(np.float64)], window, horizon, val_fraction, season=12)


@DATASETS.register("csv_series")
def csv_series(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str,
    column: str,
    time_column: str | None = None,
    series_column: str | None = None,
    window: int = 24,
    horizon: int = 1,
    season: int = 12,
    csv: CsvDialect = CsvDialect(),
) -> Dataset:
    """One numeric column of a CSV or Parquet file, ordered by `time_column` if given. A file
    of several series in long format (`date,store,sales`) names the column that tells them
    apart in `series_column`: each is windowed on its own and validates on its latest part."""
    require_task("csv_series", task, ("forecasting",))
    shards = Shards.open(path, csv)
    frame = read_table(shards.reading_floats([column] if column in shards.schema.names else []))
    for name in filter(None, [column, time_column, series_column]):
        if name not in frame.columns:
            raise DataError(f"{path} has no column {name!r}; columns: {', '.join(frame.columns)}")
    if series_column and (missing := int(frame[series_column].isna().sum())):
        raise DataError(f"{path}: {missing} rows have no {series_column!r} (the series column)")
    if time_column:
        where = f"{path}: time column {time_column!r}"
        frame = frame.assign(_time=time_order(frame[time_column], where))
        frame = frame.sort_values("_time", kind="stable")
        _refuse_repeated_times(frame, path, time_column, series_column)
    groups = [frame] if series_column is None else [g for _, g in frame.groupby(series_column)]
    parts = [pd.to_numeric(g[column], errors="coerce").interpolate().dropna() for g in groups]
    return windowed([p.to_numpy(np.float64) for p in parts], window, horizon, val_fraction, season)


def _refuse_repeated_times(
    frame: pd.DataFrame, path: str, time_column: str, series_column: str | None
) -> None:
    """Two rows of one series at one time would be windowed as two steps: several series
    read as one interleave, and every window then mixes them."""
    keys = ["_time"] if series_column is None else [series_column, "_time"]
    repeated = frame.duplicated(keys, keep=False)
    if not repeated.any():
        return
    first = frame.loc[repeated, time_column].iloc[0]
    hint = (
        "a file that holds several series names the column that tells them apart in "
        "data.params.series_column"
        if series_column is None
        else "keep one row per series and time"
    )
    raise DataError(
        f"{path}: {int(repeated.sum())} rows share their time ({time_column} {first} is one) "
        f"with another row{'' if series_column is None else ' of their series'}: {hint}"
    )


def windowed(
    parts: list[np.ndarray], window: int, horizon: int, val_fraction: float, season: int
) -> Dataset:
    """Windows of each series in `parts`, the latest `val_fraction` of each validating. A
    series too short for one training and one validation window is left out (counted in
    the schema's transform as `series_left_out`)."""
    if window < 1 or horizon < 1:
        raise DataError(f"window={window} and horizon={horizon} must be at least 1")
    splits = [_split(len(p), window, horizon, val_fraction) for p in parts]
    used = [(p, s) for p, s in zip(parts, splits, strict=True) if s is not None]
    n_windows = sum(len(p) - window - horizon + 1 for p, _ in used)
    if n_windows < 10:
        values = sum(len(p) for p in parts)
        raise DataError(
            f"{values} values{f' in {len(parts)} series' if len(parts) > 1 else ''} are too "
            f"few for window={window}, horizon={horizon}"
        )
    # one step size for every series: the spread of one-step changes in the training parts
    steps = np.concatenate([np.diff(p[: split + window]) for p, split in used])
    scale = float(np.std(steps) or 1.0)
    inputs, targets, train = [], [], []
    for part, split in used:
        x_part, y_part = _windows(part, window, horizon)
        inputs.append(x_part)
        targets.append(y_part)
        train.append(np.arange(len(x_part)) < split)
    x_all, y_all, is_train = np.concatenate(inputs), np.concatenate(targets), np.concatenate(train)
    last = x_all[:, -1:]
    x = ((x_all - last) / scale).astype(np.float32)[..., None]  # (N, window, 1)
    y = ((y_all - last) / scale).astype(np.float32)
    transform = {"offset": "last_value", "scale": scale, "season": season}
    if len(parts) > 1:
        transform |= {"series": len(used), "series_left_out": len(parts) - len(used)}
    schema = DataSchema(
        task="forecasting",
        input_shape=[window, 1],
        input_dtype="float32",
        output_dim=horizon,
        target_scale=scale,
        transform=transform,
    )
    data = Dataset(x[is_train], y[is_train], x[~is_train], y[~is_train], schema)
    data.baselines = seasonal_naive(x_all[~is_train], y_all[~is_train], season)
    return data


def _split(n_values: int, window: int, horizon: int, val_fraction: float) -> int | None:
    """How many of a series' windows train (chronological: validation comes last), or None
    for a series with too few values for one of each."""
    n_windows = n_values - window - horizon + 1
    n_val = max(1, round(n_windows * val_fraction))
    return n_windows - n_val if n_windows - n_val >= 1 else None


def _windows(series: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(len(series) - window - horizon + 1)
    inputs = series[starts[:, None] + np.arange(window)]  # (N, window)
    targets = series[starts[:, None] + window + np.arange(horizon)]  # (N, horizon)
    return inputs, targets


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
