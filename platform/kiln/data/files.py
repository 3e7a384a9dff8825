"""Reading the user's own tables (CSV or Parquet, local or s3://, gs://) through Ray Data."""

from pathlib import Path

import pandas as pd
import pyarrow.csv

from kiln.errors import DataError


def read_table(path: str, **csv_options: object) -> pd.DataFrame:
    """A whole table as pandas. Ray Data does the reading: one code path for local files,
    globs, folders of part files and object stores."""
    import ray.data

    try:
        if _is_parquet(path):
            frame = ray.data.read_parquet(path).to_pandas()
        else:
            frame = ray.data.read_csv(path, parse_options=_parse_options(csv_options)).to_pandas()
    except Exception as e:  # Ray Data wraps reader errors in its own types
        raise DataError(f"cannot read {path}: {_root_cause(e)}") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame


def check_exists(path: str) -> None:
    """Refuse a missing local file before Ray starts (remote URIs are checked at read time)."""
    if "://" not in path and not Path(path).exists():
        raise DataError(f"file not found: {path}")


def _is_parquet(path: str) -> bool:
    return path.rstrip("/").endswith((".parquet", ".pq")) or (
        "://" not in path and Path(path).is_dir()
    )


def _parse_options(options: dict[str, object]) -> pyarrow.csv.ParseOptions | None:
    delimiter = options.get("delimiter")
    return None if delimiter is None else pyarrow.csv.ParseOptions(delimiter=str(delimiter))


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
