"""The two-tower recommender under Ray Train with 2 DDP workers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.cli import main
from kiln.data.interactions import Synthetic, synthetic_interactions
from kiln.idmaps import IdMap
from kiln.registry import ModelRegistry
from kiln.registry.loading import load_model
from kiln.retrieval import INDEX_FILE, ItemIndex
from kiln.serve.replica.predictor import Predictor
from kiln.train import run_job
from kiln.train.session import STATE_FILE
from kiln.validate import load_spec
from tests.conftest import ROOT, quiet_view

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_two_tower_beats_popularity_by_a_clear_margin():
    spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml")
    outcome = run_job(spec, quiet_view(spec))
    m, b = outcome.metrics, outcome.baselines
    names = ("hr10", "ndcg10", "recall20")
    model = " ".join(f"{k}={m[f'val_{k}']:.3f}" for k in names)
    popular = " ".join(f"{k}={b[f'popularity_val_{k}']:.3f}" for k in names)
    print(f"\ntwo-tower {model} | popularity {popular}")
    assert m["val_hr10"] > 1.15 * b["popularity_val_hr10"]
    assert m["val_ndcg10"] > 1.15 * b["popularity_val_ndcg10"]

    loaded = load_model(ModelRegistry.open(), f"{outcome.model}@{outcome.version}")
    transform = loaded.card["schema"]["transform"]
    assert transform["history_len"] == 20 and transform["num_users"] == 1001
    assert len(transform["popular_items"]) > 0
    items = IdMap.from_parquet(loaded.read("items.parquet"))  # id maps beside the card
    assert len(IdMap.from_parquet(loaded.read("users.parquet"))) == 1000
    # A user vector from history alone (unknown user 0) still ranks: serving's cold path.
    history = np.zeros((1, 21), dtype=np.int64)
    history[0, -3:] = [1, 2, 3]
    with torch.no_grad():
        scores = loaded.module(torch.as_tensor(history)).numpy()
    assert scores.shape == (1, len(items) + 1)


def test_sparse_embedding_tables_train_on_two_workers_as_dense_ones_do():
    """train.optimizer.sparse_embeddings (on by itself for tables of 100,000 rows and more):
    DDP all-reduces the rows each batch used and SparseAdam steps them; the model learns as
    the dense one does, and its checkpoints hold both optimizers' state for a resume."""
    outcomes = {}
    for sparse in ("false", "true"):
        overrides = [f"train.optimizer.sparse_embeddings={sparse}", "train.epochs=5"]
        spec = load_spec(ROOT / "jobs/recsys-two-tower.yaml", [*overrides, "register=null"])
        outcomes[sparse] = run_job(spec, quiet_view(spec))
    dense, sparse = outcomes["false"].metrics, outcomes["true"].metrics
    print(f"\nNDCG@10 dense {dense['val_ndcg10']:.3f}, sparse {sparse['val_ndcg10']:.3f}")
    assert sparse["val_ndcg10"] > 0.9 * dense["val_ndcg10"]
    assert sparse["val_ndcg10"] > 1.15 * outcomes["true"].baselines["popularity_val_ndcg10"]
    states = {k: next(Path(o.run_path).rglob(STATE_FILE)) for k, o in outcomes.items()}
    parts = {k: torch.load(p, weights_only=True)["optimizers"]["model"] for k, p in states.items()}
    assert "parts" not in parts["false"] and len(parts["true"]["parts"]) == 2


def test_train_on_a_movielens_file_reports_model_and_baseline(tmp_path, capsys):
    frame = synthetic_interactions(Synthetic(users=300, items=200), seed=3)
    frame.columns = ["userId", "movieId", "timestamp"]
    frame.insert(2, "rating", 4.0)
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    main(
        [
            "train",
            str(ROOT / "jobs/recsys-two-tower.yaml"),
            "--json",
            "--set",
            f"data.path={path}",
            "--set",
            "train.epochs=2",
            "--set",
            "register.name=recsys-movielens",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert {"val_hr10", "val_ndcg10", "val_recall20"} <= set(result["metrics"])
    assert {"popularity_val_hr10", "popularity_val_ndcg10", "popularity_val_recall20"} <= set(
        result["baselines"]
    )


@pytest.mark.slow
def test_sequential_beats_two_tower_where_interests_drift(fresh_home):
    """Same synthetic data (interests drift toward what a user just consumed), split,
    evaluator and budget: self-attention over the history's order ranks better."""
    from kiln.serve.replica.predictor import Predictor

    budget = ["train.epochs=6", "train.early_stopping=null"]
    results = {}
    for job in ("recsys-two-tower", "recsys-sequential"):
        spec = load_spec(ROOT / f"jobs/{job}.yaml", budget)
        results[job] = run_job(spec, quiet_view(spec))
    two_tower, sequential = (results[j].metrics for j in results)
    popular = results["recsys-sequential"].baselines
    print(
        "\nHR@10 / NDCG@10: sequential "
        f"{sequential['val_hr10']:.3f} / {sequential['val_ndcg10']:.3f}, two-tower "
        f"{two_tower['val_hr10']:.3f} / {two_tower['val_ndcg10']:.3f}, popularity "
        f"{popular['popularity_val_hr10']:.3f} / {popular['popularity_val_ndcg10']:.3f}"
    )
    for metric in ("val_hr10", "val_ndcg10"):
        assert sequential[metric] > 1.1 * two_tower[metric]
        assert sequential[metric] > 1.2 * popular[f"popularity_{metric}"]
    registry = ModelRegistry.open()  # served by the same predictor as the two-tower
    predictor = Predictor.load(registry, registry.resolve("recsys-sequential@1"))
    vector = predictor.user_vectors([("7", ["3", "9", "12"])])
    ranked = predictor.top_k(vector, 10, [{"3", "9", "12"}])[0]
    assert len(ranked) == 10 and not {i for i, _ in ranked} & {"3", "9", "12"}


def test_streamed_interactions_train_on_two_workers_and_register_their_ids(tmp_path, monkeypatch):
    """A folder of Parquet interactions streamed (grouped by user in Ray Data, windows made
    on the way to the workers): every training row is accounted for and the model learns.
    Its 300 items, above an exact-search threshold of 100, are registered with their IVF
    index, which a replica then reads instead of building."""
    monkeypatch.setenv("KILN_EXACT_RETRIEVAL_UP_TO", "100")
    frame = synthetic_interactions(Synthetic(users=600, items=300), seed=4)
    (tmp_path / "events").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / f"events/part-{i}.parquet", index=False)
    spec = load_spec(
        ROOT / "jobs/recsys-two-tower.yaml",
        [
            f"data.path={tmp_path / 'events'}",
            "data.streaming=true",
            "train.epochs=4",
            "train.early_stopping=null",
            "register.name=recsys-streamed",
        ],
    )
    outcome = run_job(spec, quiet_view(spec))
    m = outcome.metrics
    print(f"\nstreamed two-tower: {m}")
    assert m["train_rows_dropped"] < 2  # streaming_split(equal=True) leaves out < world rows
    assert m["train_rows"] + m["train_rows_dropped"] == len(frame) - 600  # one held out each
    assert m["val_hr10"] > 2 * 10 / 101  # random ranking's HR@10 is 10/101
    registry = ModelRegistry.open()
    loaded = load_model(registry, f"{outcome.model}@{outcome.version}")
    assert len(IdMap.from_parquet(loaded.read("users.parquet"))) == 600
    assert INDEX_FILE in loaded.version.manifest["files"]
    recommender = Predictor.load(registry, loaded.version)
    index = recommender.index
    vectors = recommender.module.item_vectors().detach().numpy()
    rebuilt = ItemIndex(vectors, exact_up_to=100)
    assert index.mode == "ivf" and (index.nprobe, index.recall) == (rebuilt.nprobe, rebuilt.recall)
    assert index.vectors is None  # the stored index holds them: no item tower at load
    queries = vectors[1:6]
    assert index.search(queries, 10, [set()] * 5) == rebuilt.search(queries, 10, [set()] * 5)
    monkeypatch.setenv("KILN_EXACT_RETRIEVAL_UP_TO", "1000")  # a serving-time setting wins
    assert Predictor.load(registry, loaded.version).index.mode == "exact"
