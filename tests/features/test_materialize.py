"""kiln.features.materialize: users' recent histories from an interactions table."""

import json

import pandas as pd
import pytest
import yaml

from kiln.features.materialize import interactions_for, recent_histories
from kiln.registry import ModelRegistry
from tests.conftest import ROOT


@pytest.mark.ray
@pytest.mark.usefixtures("ray_cluster", "fresh_home")
def test_a_newer_file_is_read_as_the_model_read_its_training_data(tmp_path):
    """`kiln features load orders.csv --model shop@1` for a model trained on a shop's own
    columns (customer, product, day): the file was read as if it were MovieLens-like,
    'no item, time, user column'. Its dialect (`;` between fields) comes along too."""
    spec = yaml.safe_load((ROOT / "jobs/recsys-two-tower.yaml").read_text())
    spec["data"] = {
        "name": "interactions",
        "path": str(tmp_path / "training.csv"),
        "params": {
            "user_column": "customer",
            "item_column": "product",
            "time_column": "day",
            "csv": {"delimiter": ";"},
        },
    }
    card = {"schema": {"transform": {"history_len": 2}}}
    files = {"spec.yaml": yaml.safe_dump(spec).encode(), "model.json": json.dumps(card).encode()}
    ModelRegistry.open().register("shop", files)
    orders = pd.DataFrame(
        {
            "customer": ["ann", "ann", "ann", "bob"],
            "product": ["tea", "jam", "oat", "tea"],
            "day": ["2024-03-02", "2024-01-05", "2024-02-01", "2024-01-01"],
        }
    )
    orders.to_csv(tmp_path / "orders.csv", sep=";", index=False)
    history_len, frame = interactions_for("shop@1", tmp_path / "orders.csv")
    assert history_len == 2
    histories = recent_histories(frame, history_len)
    assert [item for item, _ in histories["ann"]] == ["oat", "tea"]  # the newest two, by date
    assert [item for item, _ in histories["bob"]] == ["tea"]
