"""Reading the user's own tables (CSV or Parquet, local or s3://, gs://) through Ray Data."""

from pathlib import Path

import pandas as pd

from kiln.errors import DataError


def read_table(path: str, **csv_options: object) -> pd.DataFrame:
    """A whole table as pandas. Ray Data does the reading: one code path for local files,
    globs, folders of part files and object stores."""
    import ray.data

    reader = ray.data.read_parquet if _is_parquet(path) else ray.data.read_csv
    try:
        options = {} if _is_parquet(path) else _csv_options(path, csv_options)
        frame = reader(path, **options).to_pandas()
    except Exception as e:  # Ray Data wraps reader errors in its own types
        raise DataError(f"cannot read {path}: {_root_cause(e)}") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame


def check_exists(path: str) -> None:
    """Refuse a missing local file before any Ray process starts (remote URIs are checked at read)."""
    if "://" not in path and not Path(path).exists():
        raise DataError(f"file not found: {path}")


def _is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith((".parquet", ".pq")) or (
        "://" not in path and Path(path).is_dir()
    )


def _csv_options(path: str, options: dict[str, object]) -> dict[str, object]:
    import pyarrow.csv as pv

    delimiter = options.get("delimiter")
    if delimiter is None:
        return {}
    return {"parse_options": pv.ParseOptions(delimiter=str(delimiter))}


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
