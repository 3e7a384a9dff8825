"""Ranking metrics for recommenders, shared by training, baselines and tests.

    hits = sampled_sums(candidate_scores, candidates)      # per shard, then summed
    ranking_metrics([hits[0], hits[1], recall, users])      # {"val_hr10": .., ...}

NCF protocol (He et al., 2017): each validation user's held-out item is ranked against 100
sampled items the user never interacted with; HR@10 is the share ranked in the top 10 and
NDCG@10 rewards it by 1/log2(rank + 2). Recall@20 ranks it against the whole catalogue, less
the items the user saw in training: over every validation user up to RECALL_USERS, else over a
fixed sample of them (`recall_rows`: a million users against a million items is 10^12
scores), in chunks of users small enough to hold. Ties count half against the held-out item
(the expected rank under random tie-breaking), so a constant scorer is not rewarded.
"""

import math
from collections.abc import Callable

import numpy as np

RANKING_SUMS = ("hr10", "ndcg10", "recall20", "users", "recall_users")
RECALL_USERS = 10_000  # validation users ranked against the whole catalogue, at most
CHUNK_SCORES = 2**23  # user x item scores held at once (64 MiB of float64)


def rank_of_first(scores: np.ndarray) -> np.ndarray:
    """(N, C) scores whose column 0 is the held-out item -> its 0-based rank per row."""
    positive = scores[:, :1]
    greater = (scores[:, 1:] > positive).sum(axis=1)
    ties = (scores[:, 1:] == positive).sum(axis=1)
    return greater + ties // 2


def sampled_sums(candidate_scores: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """HR@10 and NDCG@10 sums over rows of [held-out, 100 negatives] scores. Candidates that
    are item 0 (padding, for catalogues too small to sample from) never count."""
    if candidates is not None:
        candidate_scores = np.where(candidates == 0, -np.inf, candidate_scores)
    rank = rank_of_first(candidate_scores)
    hit = rank < 10
    return np.array([hit.sum(), (hit / np.log2(rank + 2)).sum()], dtype=np.float64)


def recall_rows(users: int) -> np.ndarray:
    """The validation users (positions) Recall@20 is measured on: all of them up to
    RECALL_USERS, else every k-th, the same sample on every rank and in every epoch."""
    return np.arange(0, users, max(1, math.ceil(users / RECALL_USERS)))


def catalogue_hits(
    scores_of: Callable[[np.ndarray], np.ndarray],
    positives: np.ndarray,
    seen: list[np.ndarray],
    items: int,
) -> float:
    """Recall@20 numerator over the given users: rows whose held-out item ranks in the top 20
    of all items, with the padding item 0 and the user's training items excluded.
    `scores_of(rows)` gives those rows' scores over the catalogue, a chunk at a time."""
    chunk = max(1, CHUNK_SCORES // max(items, 1))
    hits = 0.0
    for start in range(0, len(positives), chunk):
        rows = np.arange(start, min(start + chunk, len(positives)))
        hits += _hits(scores_of(rows), positives[rows], [seen[i] for i in rows])
    return hits


def _hits(all_scores: np.ndarray, positives: np.ndarray, seen: list[np.ndarray]) -> float:
    scores = all_scores.astype(np.float64, copy=True)
    scores[:, 0] = -np.inf
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    rows = np.arange(len(scores))
    ordered = np.concatenate([scores[rows, positives][:, None], scores], axis=1)
    ordered[rows, positives + 1] = -np.inf  # the held-out item itself, once
    return float((rank_of_first(ordered) < 20).sum())


def ranking_metrics(sums: list[float], prefix: str = "val_") -> dict[str, float]:
    total = dict(zip(RANKING_SUMS, sums, strict=True))
    users, recall_users = max(total["users"], 1), max(total["recall_users"], 1)
    return {
        f"{prefix}hr10": float(total["hr10"] / users),
        f"{prefix}ndcg10": float(total["ndcg10"] / users),
        f"{prefix}recall20": float(total["recall20"] / recall_users),
    }


def popularity_metrics(
    popularity: np.ndarray, candidates: np.ndarray, positives: np.ndarray, seen: list[np.ndarray]
) -> dict[str, float]:
    """The popularity baseline through the same evaluator: score = training interactions.
    Every user has the same scores, so the held-out item's catalogue rank is a count: the
    items above it (ties half), less those of them the user saw; no score matrix is needed."""
    step = max(1, CHUNK_SCORES // max(1, candidates.shape[1]))  # rows of scores at once
    hits = sum(
        (
            sampled_sums(popularity[c], c)
            for c in np.split(candidates, range(step, len(candidates), step))
        ),
        np.zeros(2),
    )
    sample = recall_rows(len(positives))
    ranked = np.sort(popularity[1:])  # item 0 (padding) never ranks
    recall = 0.0
    for row in sample:
        own, items = popularity[positives[row]], seen[row]
        above = len(ranked) - np.searchsorted(ranked, own, side="right")
        tied = np.searchsorted(ranked, own, side="right") - np.searchsorted(ranked, own) - 1
        others = popularity[items[items != positives[row]]]
        rank = above - (others > own).sum() + (tied - (others == own).sum()) // 2
        recall += rank < 20
    sums = [hits[0], hits[1], recall, len(positives), len(sample)]
    return ranking_metrics(sums, prefix="popularity_val_")
