"""Reading the user's own tables in memory (CSV or Parquet; a file, a folder of part files or
a glob; local, s3:// or gs://) through Ray Data. Tables too large for that stream instead
(kiln.data.stream)."""

import glob
from pathlib import Path

import pandas as pd

from kiln.data.shards import GLOB, Shards
from kiln.data.stream import quiet_ray_data
from kiln.errors import DataError


def read_table(shards: Shards, columns: list[str] | None = None) -> pd.DataFrame:
    """A whole table as pandas, read as the streamed path reads it (Shards.dataset): one code
    path for local files, globs, folders of part files and object stores."""
    quiet_ray_data()
    try:
        # by name, in the first shard's order: shards may hold their columns in any order
        frame = shards.dataset(columns or shards.schema.names).to_pandas()
    except Exception as e:  # Ray Data wraps reader errors in its own types
        why = shards.explain(e)
        named = why.startswith(tuple(shards.files))  # the file that failed
        raise DataError(f"cannot read {why if named else f'{shards.path}: {why}'}") from None
    if frame.empty:
        raise DataError(f"{shards.path} has no rows")
    return frame


def check_exists(path: str) -> None:
    """Refuse a missing local file or a glob that matches nothing before Ray starts (remote
    URIs are checked when the job opens them)."""
    if "://" in path:
        return
    if GLOB & set(path) and not glob.glob(path, recursive=True):
        raise DataError(f"no files match {path}")
    if not GLOB & set(path) and not Path(path).exists():
        raise DataError(f"file not found: {path}")
