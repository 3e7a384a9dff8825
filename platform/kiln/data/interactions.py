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
    user_index = {u: i + 1 for i, u in enumerate(user_ids)}
    item_index = {v: i + 1 for i, v in enumerate(item_ids)}
    cold = ~val["item"].isin(item_index)  # items never seen in training cannot be ranked
    val = val[~cold]
    histories = {
        user_index[u]: np.array([item_index[i] for i in items], dtype=np.int64)
        for u, items in train.groupby("user", sort=False)["item"]
    }
    x_train, y_train = _training_examples(histories, history_len)
    val_users = np.array([user_index[u] for u in val["user"]], dtype=np.int64)
    y_val = np.array([item_index[i] for i in val["item"]], dtype=np.int64)
    x_val = (
        np.stack([_example(u, histories[u], history_len) for u in val_users])
        if len(val_users)
        else np.zeros((0, 1 + history_len), np.int64)
    )
    popularity = np.bincount(
        np.concatenate(list(histories.values())), minlength=len(item_ids) + 1
    ).astype(np.float64)
    seen = [histories[u] for u in val_users]
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


def _example(user: int, history: np.ndarray, history_len: int) -> np.ndarray:
    recent = history[-history_len:]
    row = np.zeros(1 + history_len, dtype=np.int64)
    row[0] = user
    if len(recent):
        row[-len(recent) :] = recent
    return row


def _training_examples(
    histories: dict[int, np.ndarray], history_len: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for user, items in histories.items():
        for t in range(len(items)):
            xs.append(_example(user, items[:t], history_len))
            ys.append(items[t])
    return np.stack(xs), np.array(ys, dtype=np.int64)


def _negatives(
    seen: list[np.ndarray], positives: np.ndarray, n_items: int, seed: int
) -> np.ndarray:
    """NEGATIVES items per user that the user never interacted with (fixed by the seed). A
    catalogue too small for that many is padded with item 0, which scorers rank last."""
    rng = np.random.default_rng(seed + 1)
    out = np.zeros((len(seen), NEGATIVES), dtype=np.int64)
    for row, (items, positive) in enumerate(zip(seen, positives, strict=True)):
        allowed = np.setdiff1d(np.arange(1, n_items + 1), np.append(items, positive))
        take = min(NEGATIVES, len(allowed))
        out[row, :take] = rng.choice(allowed, take, replace=False)
    return out
