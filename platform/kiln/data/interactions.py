"""User-item interactions for recommenders: MovieLens files (`ratings.csv`: userId, movieId,
rating, timestamp; `u.data`: tab-separated user, item, rating, timestamp), any table with user,
item and time columns, or a synthetic generator with known structure.

Ids are remapped to dense indices (users and items from 1; 0 means unknown user / no item); the
maps travel in `extras["ids"]` and are registered beside the model as Parquet (kiln.idmaps).
The split is leave-last-out by time: each user's latest interaction is held out for
validation. Training examples are (user, the N items before) -> next item, so the user tower
learns to work from recent history.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

from kiln.data.base import DATASETS, Dataset, require_task
from kiln.data.files import read_table
from kiln.errors import DataError
from kiln.metrics.ranking import popularity_metrics
from kiln.schema import DataSchema

NEGATIVES = 100  # sampled per validation user (the NCF protocol)
EXACT_NEGATIVES_UP_TO = 20_000  # items; larger catalogues sample negatives by rejection
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
    user_column: str | None = None,
    item_column: str | None = None,
    time_column: str | None = None,
    synthetic: Synthetic = Synthetic(),
) -> Dataset:
    """From `path` (CSV or Parquet; MovieLens layouts detected), else synthetic."""
    require_task("interactions", task, ("recommendation",))
    if path:
        frame = read_interactions(path, user_column, item_column, time_column)
    else:
        frame = synthetic_interactions(synthetic, seed)
    return leave_last_out(frame, history_len, seed)


def read_interactions(
    path: str, user: str | None, item: str | None, time: str | None
) -> pd.DataFrame:
    if _is_udata(path):
        frame = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "time"])
    else:
        frame = read_table(path)
        columns = _columns(frame, user, item, time)
        frame = frame.rename(columns={v: k for k, v in columns.items()})
    missing = {"user", "item", "time"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: no {', '.join(sorted(missing))} column (set data.params.*_column)"
        )
    return frame[["user", "item", "time"]]


def _is_udata(path: str) -> bool:
    """MovieLens 100k's u.data: four tab-separated numbers per line, no header."""
    if "://" in path or Path(path).suffix in (".parquet", ".pq"):
        return False
    with open(path) as f:
        first = f.readline().rstrip("\n").split("\t")
    return len(first) == 4 and all(
        part.strip().lstrip("-").replace(".", "", 1).isdigit() for part in first
    )


def _columns(
    frame: pd.DataFrame, user: str | None, item: str | None, time: str | None
) -> dict[str, str]:
    given = {"user": user, "item": item, "time": time}
    for layout in LAYOUTS.values():
        if set(layout) <= set(frame.columns):
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


def leave_last_out(frame: pd.DataFrame, history_len: int, seed: int) -> Dataset:
    frame = frame.dropna(subset=["user", "item", "time"])
    frame = frame.sort_values(["user", "time"], kind="stable")
    frame = frame.drop_duplicates(["user", "item"], keep="first")  # a re-watch adds nothing new
    if frame.empty:
        raise DataError("no interactions to train on")
    position = frame.groupby("user").cumcount(ascending=False)  # 0 = the user's latest
    counts = frame.groupby("user")["item"].transform("size")
    is_val = (position == 0) & (counts >= 2)
    train, val = frame[~is_val], frame[is_val]
    user_ids = np.sort(train["user"].unique())
    item_ids = np.sort(train["item"].unique())
    item_index = pd.Index(item_ids)
    cold = ~val["item"].isin(item_index)  # items never seen in training cannot be ranked
    val = val[~cold]
    users = pd.Index(user_ids).get_indexer(train["user"]) + 1  # dense, in (user, time) order
    items = pd.Index(item_ids).get_indexer(train["item"]) + 1
    position = train.groupby("user").cumcount().to_numpy()  # 0 = the user's first
    x_train, y_train = _windows(users, items, position, history_len), items.astype(np.int64)
    val_users = pd.Index(user_ids).get_indexer(val["user"]).astype(np.int64) + 1
    y_val = pd.Index(item_ids).get_indexer(val["item"]).astype(np.int64) + 1
    x_val = _next_windows(users, items, position, val_users, history_len)
    popularity = np.bincount(items, minlength=len(item_ids) + 1).astype(np.float64)
    starts = np.searchsorted(users, val_users)  # each validation user's training items
    ends = np.searchsorted(users, val_users, side="right")
    seen = [items[a:b] for a, b in zip(starts, ends, strict=True)]
    negatives = _negatives(seen, y_val, len(item_ids), seed)
    candidates = np.concatenate([y_val[:, None], negatives], axis=1)
    schema = DataSchema(
        task="recommendation",
        input_shape=[1 + history_len],
        input_dtype="int64",
        output_dim=len(item_ids) + 1,
        vocab_size=len(item_ids) + 1,
        transform={
            "num_users": len(user_ids) + 1,
            "history_len": history_len,
            "popular_items": item_ids[np.argsort(-popularity[1:], kind="stable")[:200]].tolist(),
            "dropped_cold_items": int(cold.sum()),
        },
    )
    data = Dataset(x_train, y_train, x_val, y_val, schema)
    data.extras = {
        "candidates": candidates,
        "seen": seen,
        "popularity": popularity,
        # Index i + 1 of each is the i-th id: registered as Parquet (kiln.idmaps), not JSON.
        "ids": {"users": user_ids, "items": item_ids},
    }
    data.baselines = popularity_metrics(popularity, candidates, y_val, seen) if len(y_val) else {}
    return data


def _windows(
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


def _next_windows(
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


def _negatives(
    seen: list[np.ndarray], positives: np.ndarray, n_items: int, seed: int
) -> np.ndarray:
    """NEGATIVES items per user that the user never interacted with (fixed by the seed). A
    catalogue too small for that many is padded with item 0, which scorers rank last. Up to
    EXACT_NEGATIVES_UP_TO items, drawn from the exact set difference (as published figures
    were); above, by rejection, which costs per user what the user saw, not the catalogue."""
    if n_items > EXACT_NEGATIVES_UP_TO:
        return _rejected_negatives(seen, positives, n_items, seed)
    rng = np.random.default_rng(seed + 1)
    out = np.zeros((len(seen), NEGATIVES), dtype=np.int64)
    for row, (items, positive) in enumerate(zip(seen, positives, strict=True)):
        allowed = np.setdiff1d(np.arange(1, n_items + 1), np.append(items, positive))
        take = min(NEGATIVES, len(allowed))
        out[row, :take] = rng.choice(allowed, take, replace=False)
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
        codes = rows[:, None] * width + draws
        spot = np.searchsorted(taken, codes).clip(max=len(taken) - 1)
        redraw = taken[spot] == codes
        order = np.argsort(draws, axis=1, kind="stable")  # an item drawn twice in a row
        ranked = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros_like(redraw)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        redraw |= repeat
        draws[redraw] = rng.integers(1, n_items + 1, int(redraw.sum()))
        out[rows] = draws
        rows = rows[redraw.any(axis=1)]
    return out
