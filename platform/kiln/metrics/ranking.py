"""Ranking metrics for recommenders, shared by training, baselines and tests.

    hits = sampled_sums(candidate_scores, candidates)      # per shard, then summed
    ranking_metrics([hits[0], hits[1], recall, users])      # {"val_hr10": .., ...}

NCF protocol (He et al., 2017): each validation user's held-out item is ranked against 100
sampled items the user never interacted with; HR@10 is the share ranked in the top 10 and
NDCG@10 rewards it by 1/log2(rank + 2). Recall@20 ranks it against the whole catalogue, less
the items the user saw in training. Ties count half against the held-out item (the expected
rank under random tie-breaking), so a constant scorer is not rewarded.
"""

import numpy as np

RANKING_SUMS = ("hr10", "ndcg10", "recall20", "users")


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


def catalogue_hits(all_scores: np.ndarray, positives: np.ndarray, seen: list[np.ndarray]) -> float:
    """Recall@20 numerator: rows whose held-out item ranks in the top 20 of all items, with
    the padding item 0 and the user's training items excluded."""
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
    users = max(total["users"], 1)
    return {
        f"{prefix}{name}": float(total[name] / users) for name in ("hr10", "ndcg10", "recall20")
    }


def popularity_metrics(
    popularity: np.ndarray, candidates: np.ndarray, positives: np.ndarray, seen: list[np.ndarray]
) -> dict[str, float]:
    """The popularity baseline through the same evaluator: score = training interactions."""
    hits = sampled_sums(popularity[candidates], candidates)
    all_scores = np.broadcast_to(popularity, (len(positives), len(popularity)))
    recall = catalogue_hits(all_scores, positives, seen)
    return ranking_metrics([hits[0], hits[1], recall, len(positives)], prefix="popularity_val_")
