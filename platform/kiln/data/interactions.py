"""User-item interactions for recommenders: MovieLens files (`ratings.csv`: userId, movieId,
rating, timestamp; 100k's `u.data` and 1M's or 10M's `ratings.dat`: user, item, rating and
timestamp, headerless, between tabs or `::`), any table with user, item and time columns, or a
synthetic generator with known structure.

Ids are remapped to dense indices (users and items from 1; 0 means unknown user / no item); the
maps travel in `extras["ids"]` and are registered beside the model as Parquet (kiln.idmaps).
The split is leave-last-out by time: each user's latest interaction is held out for
validation. Training examples are (user, the N items before) -> next item, so the user tower
learns to work from recent history (kiln.data.histories, for both paths). Tables larger than
`data.streaming`'s threshold stream: Ray Data groups them by user and the windows are made on
the way to the workers.
"""

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

from kiln.data.base import DATASETS, Dataset, require_task
from kiln.data.files import read_table
from kiln.data.histories import NEGATIVES, VALIDATION_USERS, leave_last_out, stream_histories
from kiln.data.shards import CsvDialect, Shards, is_number
from kiln.data.stream import StreamedDataset, should_stream
from kiln.errors import DataError

__all__ = ["NEGATIVES", "Synthetic", "leave_last_out", "read_interactions"]
LAYOUTS = {  # header names of known layouts -> our columns
    "movielens": {"userId": "user", "movieId": "item", "timestamp": "time"},
}


class Synthetic(BaseModel):
    """Latent-factor users and items, Zipf-like popularity, and interests that drift toward
    what the user just consumed (so recent history predicts the next item)."""

    model_config = ConfigDict(extra="forbid")
    users: PositiveInt = 1000
    items: PositiveInt = 500
    factors: PositiveInt = 16
    interactions_per_user: PositiveInt = 30
    popularity_skew: float = 0.7
    drift: float = 0.5
    temperature: PositiveFloat = 0.1


@DATASETS.register("interactions")
def interactions(
    task: str,
    val_fraction: float,
    seed: int,
    *,
    path: str | None = None,
    history_len: PositiveInt = 20,
    validation_users: PositiveInt = VALIDATION_USERS,
    user_column: str | None = None,
    item_column: str | None = None,
    time_column: str | None = None,
    synthetic: Synthetic = Synthetic(),
    streaming: bool | Literal["auto"] = "auto",
    csv: CsvDialect = CsvDialect(),
) -> Dataset | StreamedDataset:
    """From `path` (CSV or Parquet; MovieLens layouts detected; streamed by size), else
    synthetic. MovieLens' headerless `u.data` and `ratings.dat` are read in memory. Past
    `validation_users` users, a seeded sample of them is validated on."""
    require_task("interactions", task, ("recommendation",))
    if not path:
        frame = synthetic_interactions(synthetic, seed)
        return leave_last_out(frame, history_len, seed, validation_users)
    if not _headerless(path):
        shards = Shards.open(path, csv)
        if should_stream(streaming, shards.bytes):
            names = [f.name for f in shards.schema]
            columns = _columns(names, user_column, item_column, time_column)
            shards.require(list(columns.values()))
            return stream_histories(shards, columns, history_len, seed, validation_users)
    frame = read_interactions(path, user_column, item_column, time_column, csv)
    return leave_last_out(frame, history_len, seed, validation_users)


def read_interactions(
    path: str,
    user: str | None,
    item: str | None,
    time: str | None,
    csv: CsvDialect = CsvDialect(),
) -> pd.DataFrame:
    if separator := _headerless(path):
        frame = _read_headerless(path, separator)
    else:
        frame = read_table(Shards.open(path, csv))
        columns = _columns(list(frame.columns), user, item, time)
        frame = frame.rename(columns={v: k for k, v in columns.items()})
    missing = {"user", "item", "time"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: no {', '.join(sorted(missing))} column (set data.params.*_column)"
        )
    return frame[["user", "item", "time"]]


# MovieLens' headerless ratings: the separator -> where user, item and time are once read
# between single characters (pyarrow's delimiter is one: `::` leaves an empty field between).
HEADERLESS = {"\t": (0, 1, 3), "::": (0, 2, 6)}  # 100k's u.data; 1M's and 10M's ratings.dat


def _headerless(path: str) -> str | None:
    """The separator of a MovieLens ratings file without a header (four numbers a line), or
    None for any other file."""
    if "://" in path or not Path(path).is_file() or Path(path).suffix in (".parquet", ".pq"):
        return None
    with open(path, errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    for separator in HEADERLESS:
        parts = first.split(separator)
        if len(parts) == 4 and all(is_number(part) for part in parts):
            return separator
    return None


def _read_headerless(path: str, separator: str) -> pd.DataFrame:
    """Read by pyarrow's multithreaded reader (ML-10M's 10 million lines in seconds, where
    pandas' `sep="::"` takes its slow Python parser)."""
    from pyarrow import csv

    fields = [f"f{i}" for i in HEADERLESS[separator]]
    try:
        table = csv.read_csv(
            path,
            read_options=csv.ReadOptions(autogenerate_column_names=True),
            parse_options=csv.ParseOptions(delimiter=separator[0]),
            convert_options=csv.ConvertOptions(include_columns=fields),
        )
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a MovieLens ratings file past its first line: {e}") from None
    return table.rename_columns(["user", "item", "time"]).to_pandas()


def _columns(
    names: list[str], user: str | None, item: str | None, time: str | None
) -> dict[str, str]:
    """Ours (user, item, time) -> the table's column names."""
    given = {"user": user, "item": item, "time": time}
    for layout in LAYOUTS.values():
        if set(layout) <= set(names):
            detected = {ours: theirs for theirs, ours in layout.items()}
            return {k: given[k] or detected[k] for k in given}
    return {k: v or k for k, v in given.items()}


def synthetic_interactions(params: Synthetic, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(params.users, params.factors))
    items = rng.normal(size=(params.items, params.factors)) / np.sqrt(params.factors)
    popularity = -params.popularity_skew * np.log(rng.permutation(params.items) + 1.0)
    lengths = np.maximum(rng.poisson(params.interactions_per_user, params.users), 3)
    interest = users / np.linalg.norm(users, axis=1, keepdims=True)
    seen = np.zeros((params.users, params.items), dtype=bool)
    chosen = np.zeros((params.users, lengths.max()), dtype=np.int64)
    for step in range(lengths.max()):
        logits = interest @ items.T / params.temperature + popularity
        logits[seen] = -np.inf
        pick = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # a softmax sample
        chosen[:, step] = pick
        seen[np.arange(params.users), pick] = True
        picked = items[pick] / np.linalg.norm(items[pick], axis=1, keepdims=True)
        interest = (1 - params.drift) * interest + params.drift * picked
    rows = [
        (u + 1, chosen[u, t] + 1, 1_000_000 + 1000 * u + 10 * t)
        for u in range(params.users)
        for t in range(lengths[u])
    ]
    return pd.DataFrame(rows, columns=["user", "item", "time"])
