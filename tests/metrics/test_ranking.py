"""The ranking evaluator on hand-made cases whose HR, NDCG and Recall are known."""

import math

import numpy as np
import pytest

from kiln.metrics.ranking import (
    catalogue_hits,
    popularity_metrics,
    rank_of_first,
    ranking_metrics,
    sampled_sums,
)


def test_held_out_item_ranked_first():
    hits = sampled_sums(np.array([[9.0, 1.0, 2.0, 3.0]]))
    assert hits.tolist() == [1.0, 1.0]  # HR 1, NDCG 1/log2(2) = 1


def test_rank_five_gives_known_ndcg():
    scores = np.array([[5.0, 9, 8, 7, 6, 9.5, 1, 2]])  # 5 candidates above the held-out item
    assert rank_of_first(scores).tolist() == [5]
    hr, ndcg = sampled_sums(scores)
    assert hr == 1 and ndcg == pytest.approx(1 / math.log2(7))


def test_outside_top_ten_is_a_miss():
    scores = np.array([[0.0, *range(1, 12)]])  # 11 candidates above
    assert sampled_sums(scores).tolist() == [0.0, 0.0]


def test_ties_count_half_against_the_held_out_item():
    assert rank_of_first(np.ones((1, 101))).tolist() == [50]  # a constant scorer ranks mid-way


def test_averages_over_users():
    sums = sampled_sums(np.array([[9.0, 1, 2], [0.0, 1, 2]]))  # one hit at rank 0, one at rank 2
    metrics = ranking_metrics([sums[0], sums[1], 1.0, 2.0, 2.0])
    assert metrics == pytest.approx(
        {"val_hr10": 1.0, "val_ndcg10": (1 + 1 / math.log2(4)) / 2, "val_recall20": 0.5}
    )


def test_recall_excludes_padding_and_training_items():
    n_items = 30
    scores = np.arange(n_items, dtype=float)[None, :].repeat(2, axis=0)  # item i scores i
    positives = np.array([5, 5])
    # User 0 saw the 24 best items in training: excluded, item 5 is then in the top 20.
    seen = [np.arange(6, 30), np.array([], dtype=int)]
    assert catalogue_hits(lambda rows: scores[rows], positives, seen, n_items) == 1.0


def test_popularity_baseline_through_the_same_evaluator():
    popularity = np.array([0.0, 50, 40, 30, 20, 10, 5, 4, 3, 2, 1, 0.5])
    candidates = np.array([[1, 2, 3], [11, 1, 2]])  # held-out first: most popular, then least
    metrics = popularity_metrics(
        popularity, candidates, np.array([1, 11]), [np.array([], dtype=int)] * 2
    )
    assert metrics["popularity_val_hr10"] == 1.0  # only 3 candidates: both in the top 10
    assert metrics["popularity_val_ndcg10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_recall_is_measured_in_chunks_on_a_fixed_sample_of_many_users(monkeypatch):
    from kiln.metrics import ranking

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 40))
    positives, seen = rng.integers(1, 40, 50), [rng.integers(1, 40, 3) for _ in range(50)]
    whole = catalogue_hits(lambda rows: scores[rows], positives, seen, 40)
    monkeypatch.setattr(ranking, "CHUNK_SCORES", 7 * 40)  # 7 users a chunk
    assert catalogue_hits(lambda rows: scores[rows], positives, seen, 40) == whole
    assert ranking.recall_rows(9_000).tolist() == list(range(9_000))  # all, up to 10,000
    sample = ranking.recall_rows(1_000_000)
    assert len(sample) == 10_000 and sample[1] == 100  # every 100th user, always the same
