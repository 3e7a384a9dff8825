"""Users' histories of items, and what a recommender trains and is validated on from them.
One set of functions for the in-memory path and the streamed one, so both train and validate on
the same numbers:

    histories = user_histories(frame)          # rows -> a row per user: items in time order
    counts = training_item_counts(histories)    # (item, count) per block -> the catalogue
    train = training_windows(histories, ids, n)  # (user, the n items before) -> next item
    held = held_out_rows(histories, ids, n, validated)  # their latest item, what they saw

In memory, the whole table is one block. Streamed (`stream_histories`), Ray Data
hash-partitions the rows by user (`repartition(keys=["user"], sort=True)`: every user's rows in
one block, the guarantee `map_groups` rests on), turns each block into histories, keeps them in
the object store (spilled to disk when larger), and expands them into training windows in
`map_batches` on the way to the workers each epoch. The driver holds the id maps, the
popularity counts and the validation rows (one per validated user, with the items each saw
while its negatives are drawn; then only Recall@20's sample of them), never the training
windows.

Leave-last-out by time: each user's latest interaction is held out for validation (users with
at least two); a re-watch adds nothing new (first one kept); ties in time are ordered by item,
so a table's row order never changes the split. Past `validation_users` users with a held-out
item, a seeded sample of that many is validated on (the same users on both paths): the
driver's share and each epoch's validation stay bounded however many users there are, and
HR@10 over 100,000 users has a standard error under 0.002. Every user's latest item is
held out of training all the same, so the cap never changes what trains.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kiln.data.base import Dataset
from kiln.data.shards import Shards
from kiln.data.stream import StreamedDataset, quiet_ray_data, time_order
from kiln.errors import DataError
from kiln.metrics.ranking import popularity_metrics, recall_rows
from kiln.schema import DataSchema

NEGATIVES = 100  # sampled per validation user (the NCF protocol)
VALIDATION_USERS = 100_000  # the most validated on; a seeded sample past it
EXACT_NEGATIVES_UP_TO = 20_000  # items; larger catalogues sample negatives by rejection
PARTITION_BYTES = 16 * 2**20  # of the files on disk, per hash partition of users


@dataclass(frozen=True)
class Ids:
    """Raw ids in sorted order; dense index i + 1 is the i-th (0: unknown user, no item)."""

    users: np.ndarray
    items: np.ndarray

    def user_index(self, values: Any) -> np.ndarray:
        return pd.Index(self.users).get_indexer(values).astype(np.int64) + 1

    def item_index(self, values: Any) -> np.ndarray:
        return pd.Index(self.items).get_indexer(values).astype(np.int64) + 1  # 0: unknown


def timed(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows (user, item, time) that have all three, times as numbers that order them
    (dates and timestamps as unix seconds, kiln.data.stream.time_order)."""
    frame = frame.dropna(subset=["user", "item", "time"])
    return frame.assign(time=time_order(frame["time"], "the interactions' time column"))


def user_histories(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows (user, item, time) as one row per user: `items`, in time order, first times only."""
    frame = timed(frame).sort_values(["user", "time", "item"], kind="stable")
    frame = frame.drop_duplicates(["user", "item"], keep="first")
    users, starts = np.unique(frame["user"].to_numpy(), return_index=True)
    items = np.split(frame["item"].to_numpy(), starts[1:]) if len(users) else []
    return pd.DataFrame({"user": users, "items": pd.Series(items, dtype=object)})


def _training_parts(histories: pd.DataFrame) -> list[np.ndarray]:
    """Each user's items less the held-out latest (kept when it is the only one)."""
    return [items[:-1] if len(items) >= 2 else items for items in histories["items"]]


def training_item_counts(histories: pd.DataFrame) -> pd.DataFrame:
    parts = _training_parts(histories)
    if not parts:
        return pd.DataFrame({"item": [], "count": np.zeros(0, np.int64)})
    items, counts = np.unique(np.concatenate(parts), return_counts=True)
    return pd.DataFrame({"item": items, "count": counts.astype(np.int64)})


def _flat(histories: pd.DataFrame, ids: Ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training interactions as dense (users, items, position) arrays sorted by user then
    time; position 0 is the user's first."""
    order = np.argsort(ids.user_index(histories["user"]), kind="stable")
    histories = histories.iloc[order]
    parts = _training_parts(histories)
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    users = np.repeat(ids.user_index(histories["user"]), lengths)
    items = ids.item_index(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    position = np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return users, items, position


def training_windows(histories: pd.DataFrame, ids: Ids, history_len: int) -> dict[str, Any]:
    """{"x": (rows, 1 + N) user and the N items before, "y": the next item} per interaction."""
    return _windows_of(_flat(histories, ids), history_len)


def _windows_of(flat: tuple[np.ndarray, np.ndarray, np.ndarray], history_len: int) -> dict:
    users, items, position = flat
    return {"x": windows(users, items, position, history_len), "y": items}


def held_out_rows(
    histories: pd.DataFrame, ids: Ids, history_len: int, validated: np.ndarray | None
) -> pd.DataFrame:
    """A row per validated user (`validation_sample`): the example after their training items
    (`x`), the held-out item (`y`; 0 when training never saw it: a cold item) and `seen`."""
    return _held_out_of(histories, ids, _flat(histories, ids), history_len, validated)


def _held_out_of(
    histories: pd.DataFrame,
    ids: Ids,
    flat: tuple[np.ndarray, np.ndarray, np.ndarray],
    history_len: int,
    validated: np.ndarray | None,
) -> pd.DataFrame:
    users, items, position = flat
    held = histories[histories["items"].map(len) >= 2]
    if validated is not None:
        held = held[np.isin(ids.user_index(held["user"]), validated)]
    wanted = ids.user_index(held["user"])
    order = np.argsort(wanted, kind="stable")
    wanted, last = wanted[order], [items_[-1] for items_ in held["items"].iloc[order]]
    starts = np.searchsorted(users, wanted)
    ends = np.searchsorted(users, wanted, side="right")
    return pd.DataFrame(
        {
            "user": wanted,
            "x": list(next_windows(users, items, position, wanted, history_len)),
            "y": ids.item_index(np.asarray(last)) if len(last) else np.zeros(0, np.int64),
            "seen": [items[a:b] for a, b in zip(starts, ends, strict=True)],
        }
    )


def leave_last_out(
    frame: pd.DataFrame, history_len: int, seed: int, validation_users: int = VALIDATION_USERS
) -> Dataset:
    """On a table read whole (columns user, item, time): one block."""
    histories = user_histories(frame)
    if histories.empty:
        raise DataError("no interactions to train on")
    ids, popularity = catalogue(histories["user"].to_numpy(), training_item_counts(histories))
    validated = validation_sample(ids, user_lengths(histories), validation_users, seed)
    flat = _flat(histories, ids)  # both the training windows and the held-out rows read it
    train = _windows_of(flat, history_len)
    held_out = _held_out_of(histories, ids, flat, history_len, validated)
    held = evaluation(ids, popularity, held_out, history_len, seed)
    x_val, y_val = held.extras.pop("x_val"), held.extras.pop("y_val")
    return Dataset(train["x"], train["y"], x_val, y_val, held.schema, held.baselines, held.extras)


def user_lengths(histories: pd.DataFrame) -> pd.DataFrame:
    """Each user's number of distinct items: 2 or more has one held out."""
    return pd.DataFrame({"user": histories["user"], "items": histories["items"].map(len)})


def validation_sample(ids: Ids, lengths: pd.DataFrame, most: int, seed: int) -> np.ndarray | None:
    """The users validated on, as sorted dense indices: a seeded sample of `most` of those
    with a held-out item when there are more; None: every one of them."""
    held = np.sort(ids.user_index(lengths.loc[lengths["items"] >= 2, "user"]))
    if len(held) <= most:
        return None
    return np.sort(np.random.default_rng([seed, 3]).choice(held, most, replace=False))


def catalogue(users: np.ndarray, counts: pd.DataFrame) -> tuple[Ids, np.ndarray]:
    """The id maps (every user; the items seen in training) and each item's training count
    (index 0: no item)."""
    merged = counts.groupby("item", sort=True)["count"].sum()
    ids = Ids(users=np.sort(users), items=merged.index.to_numpy())
    popularity = np.concatenate([[0.0], merged.to_numpy(np.float64)])
    return ids, popularity


@dataclass
class Evaluation:
    schema: DataSchema
    baselines: dict[str, float]
    extras: dict[str, Any]  # x_val, y_val, and what ranking them needs


def evaluation(
    ids: Ids, popularity: np.ndarray, held: pd.DataFrame, history_len: int, seed: int
) -> Evaluation:
    """The validation rows (users in order; cold items dropped), their candidates (the
    held-out item and NEGATIVES), the schema and the popularity baseline."""
    if len(held) == 0 or (held["y"].to_numpy() == 0).all():  # (a streamed none: no columns)
        raise DataError(_nothing_to_validate(len(held)))
    held = held.sort_values("user", kind="stable")
    cold = held["y"].to_numpy() == 0  # items never seen in training cannot be ranked
    held = held[~cold]
    width = 1 + history_len
    x_val = np.stack([np.asarray(x, np.int64) for x in held["x"]]) if len(held) else None
    y_val = held["y"].to_numpy(np.int64)
    seen = [np.asarray(s, dtype=np.int64) for s in held["seen"]]
    candidates = np.concatenate([y_val[:, None], negatives(seen, y_val, len(ids.items), seed)], 1)
    top = np.argsort(-popularity[1:], kind="stable")[:200]
    return Evaluation(
        schema=DataSchema(
            task="recommendation",
            input_shape=[1 + history_len],
            input_dtype="int64",
            output_dim=len(ids.items) + 1,
            vocab_size=len(ids.items) + 1,
            transform={
                "num_users": len(ids.users) + 1,
                "history_len": history_len,
                "popular_items": ids.items[top].tolist(),
                "dropped_cold_items": int(cold.sum()),
            },
        ),
        baselines=popularity_metrics(popularity, candidates, y_val, seen) if len(y_val) else {},
        extras={
            "x_val": x_val if x_val is not None else np.zeros((0, width), np.int64),
            "y_val": y_val,
            "candidates": candidates,
            # Recall@20 excludes what a user saw, on its sample of users only: the rest
            # (every training interaction, in a large dataset) stays here.
            "seen": {int(row): seen[row] for row in recall_rows(len(y_val))},
            "popularity": popularity,
            # Index i + 1 of each is the i-th id: registered as Parquet (kiln.idmaps).
            "ids": {"users": ids.users, "items": ids.items},
        },
    )


def _nothing_to_validate(held: int) -> str:
    if held == 0:
        return (
            "no user to validate on: leave-last-out holds out a user's latest item, and no "
            "user has two or more distinct items"
        )
    return (
        f"no user to validate on: each of the {held} held-out items (a user's latest) is one "
        "that no training interaction has, and an item training never saw cannot be ranked"
    )


def stream_histories(
    shards: Shards,
    columns: dict[str, str],
    history_len: int,
    seed: int,
    validation_users: int = VALIDATION_USERS,
) -> StreamedDataset:
    """Leave-last-out on files Ray Data reads (`columns`: ours -> the files' names)."""
    quiet_ray_data()
    partitions = max(2, math.ceil(shards.bytes / PARTITION_BYTES))
    try:
        histories = (
            shards.dataset(list(columns.values()))
            .map_batches(_renamed, fn_kwargs={"columns": columns}, **WHOLE_BLOCKS)
            .repartition(partitions, keys=["user"], sort=True)
            .map_batches(user_histories, **WHOLE_BLOCKS)
            .materialize()
        )
        lengths = histories.map_batches(user_lengths, **WHOLE_BLOCKS).to_pandas()
        counts = histories.map_batches(training_item_counts, **WHOLE_BLOCKS).to_pandas()
        if len(lengths) == 0:
            raise DataError(f"{shards.path}: no interactions to train on")
        ids, popularity = catalogue(lengths["user"].to_numpy(), counts)
        validated = validation_sample(ids, lengths, validation_users, seed)
        job = {"ids": ids, "history_len": history_len}
        held = histories.map_batches(
            held_out_rows, fn_kwargs={**job, "validated": validated}, **WHOLE_BLOCKS
        ).to_pandas()
    except DataError:
        raise
    except Exception as e:  # Ray Data wraps reader errors in its own types
        raise DataError(
            f"{shards.path}: cannot read the interactions: {shards.explain(e)}"
        ) from None
    train = histories.map_batches(training_windows, fn_kwargs=job, **WHOLE_BLOCKS)
    train.context.target_max_block_size = 8 * 2**20
    digest = hashlib.sha256(f"{shards.fingerprint}|{columns}|{history_len}".encode())
    held = evaluation(ids, popularity, held, history_len, seed)
    return StreamedDataset(
        held.schema,
        train_rows=int(popularity.sum()),
        source=digest.hexdigest(),
        datasets={"train": train},
        baselines=held.baselines,
        extras=held.extras,  # with the validation rows: x_val, y_val
    )


WHOLE_BLOCKS: dict[str, Any] = {"batch_format": "pandas", "batch_size": None}


def _renamed(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    return frame.rename(columns={theirs: ours for ours, theirs in columns.items()})


def windows(
    users: np.ndarray, items: np.ndarray, position: np.ndarray, history_len: int
) -> np.ndarray:
    """(rows, 1 + N): each training row's user and the N items before it (oldest first,
    left-padded with 0), rows sorted by user then time: one example per step of a history."""
    x = np.zeros((len(items), 1 + history_len), dtype=np.int64)
    x[:, 0] = users
    for back in range(1, history_len + 1):  # the item `back` steps earlier, same user
        earlier = position >= back
        x[back:, -back][earlier[back:]] = items[:-back][earlier[back:]]
    return x


def next_windows(
    users: np.ndarray, items: np.ndarray, position: np.ndarray, wanted: np.ndarray, history_len: int
) -> np.ndarray:
    """(len(wanted), 1 + N): the example after each wanted user's last training item."""
    x = np.zeros((len(wanted), 1 + history_len), dtype=np.int64)
    x[:, 0] = wanted
    last = np.searchsorted(users, wanted, side="right") - 1  # the user's last training row
    for back in range(history_len):
        have = position[last] >= back
        x[have, -1 - back] = items[last[have] - back]
    return x


def negatives(seen: list[np.ndarray], positives: np.ndarray, n_items: int, seed: int) -> np.ndarray:
    """NEGATIVES items per user that the user never interacted with (fixed by the seed). A
    catalogue too small for that many is padded with item 0, which scorers rank last. Up to
    EXACT_NEGATIVES_UP_TO items, drawn from the exact set difference (as published figures
    were); above, by rejection, which costs per user what the user saw, not the catalogue."""
    if n_items > EXACT_NEGATIVES_UP_TO:
        return _rejected_negatives(seen, positives, n_items, seed)
    rng = np.random.default_rng(seed + 1)
    out = np.zeros((len(seen), NEGATIVES), dtype=np.int64)
    unseen = np.ones(n_items + 1, dtype=bool)  # a mask, not a set difference: 50x faster
    unseen[0] = False
    for row, (items, positive) in enumerate(zip(seen, positives, strict=True)):
        unseen[items] = unseen[positive] = False
        allowed = np.flatnonzero(unseen)  # sorted, as np.setdiff1d's
        take = min(NEGATIVES, len(allowed))
        out[row, :take] = rng.choice(allowed, take, replace=False)
        unseen[items] = unseen[positive] = True
    return out


def _rejected_negatives(
    seen: list[np.ndarray], positives: np.ndarray, n_items: int, seed: int
) -> np.ndarray:
    """Uniform draws over the catalogue, redrawn where one hits a seen item, the positive or
    an earlier draw in its row. Membership is a binary search of (row, item) codes in the
    sorted codes of what each row saw; after the first round only the rows with a redraw are
    looked at again (in a large catalogue, few)."""
    rng = np.random.default_rng(seed + 1)
    width = n_items + 1  # codes: row * width + item
    lengths = np.array([len(s) for s in seen], dtype=np.int64)
    owners = np.repeat(np.arange(len(seen)), lengths)
    flat = np.concatenate([*seen, np.zeros(0, np.int64)])
    taken = np.sort(
        np.concatenate([owners * width + flat, np.arange(len(seen)) * width + positives])
    )
    out = rng.integers(1, n_items + 1, size=(len(seen), NEGATIVES))
    rows = np.arange(len(seen))
    while len(rows):
        draws = out[rows]
        redraw = np.concatenate(
            [
                _to_redraw(rows[a : a + CHECK_ROWS], draws[a : a + CHECK_ROWS], taken, width)
                for a in range(0, len(rows), CHECK_ROWS)
            ]
        )
        draws[redraw] = rng.integers(1, n_items + 1, int(redraw.sum()))
        out[rows] = draws
        rows = rows[redraw.any(axis=1)]
    return out


CHECK_ROWS = 2**16  # rows of draws checked at once: their temporaries stay near 50 MiB each


def _to_redraw(rows: np.ndarray, draws: np.ndarray, taken: np.ndarray, width: int) -> np.ndarray:
    """Which draws hit an item the row saw, its positive, or an earlier draw in the row."""
    codes = rows[:, None] * width + draws
    spot = np.searchsorted(taken, codes).clip(max=len(taken) - 1)
    redraw = taken[spot] == codes
    order = np.argsort(draws, axis=1, kind="stable")  # an item drawn twice in a row
    ranked = np.take_along_axis(draws, order, axis=1)
    repeat = np.zeros_like(redraw)
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    return redraw | repeat
