"""Served models take raw inputs: the preprocessing fitted at training (standardisation, a
text vocabulary) is applied in the replica by the training code's own functions."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from kiln import preprocess
from kiln.bench.load import binary_body_for, body_for
from kiln.data.base import shuffled_split
from kiln.data.stream import in_validation
from kiln.preprocess import token_ids
from kiln.registry.loading import load_model
from tests.data.generated import people, reviews
from tests.serve.conftest import deployed, infer_body

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def raw_serving(raw_input_models, serving_config):
    model_app = next(a for a in serving_config["applications"] if a["name"] == "digits-cnn")
    apps = [
        {
            **model_app,
            "name": name,
            "route_prefix": f"/v2/models/{name}",
            "args": {**model_app["args"], "model": f"{name}@staging"},
        }
        for name in ("breast-cancer-mlp", "reviews-rnn", "people-mlp")
    ]
    config = {**serving_config, "applications": apps}
    with deployed(config) as url:
        yield url


def test_raw_breast_cancer_rows_get_the_registered_accuracy(raw_serving, raw_input_models):
    import httpx

    bunch = load_breast_cancer()
    _, val = shuffled_split(len(bunch.data), val_fraction=0.25, seed=0)  # the job's split
    rows = bunch.data[val].astype(np.float32)  # raw: millimetres, areas, ratios
    response = httpx.post(
        f"{raw_serving}/v2/models/breast-cancer-mlp/infer", json=infer_body(rows), timeout=30
    )
    assert response.status_code == 200, response.text
    labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
    accuracy = np.mean(np.array(labels) == np.array(bunch.target_names)[bunch.target[val]])
    version = raw_input_models.resolve("breast-cancer-mlp@staging")
    best = raw_input_models.read_json(version, "metrics.json")["best"]
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert accuracy > 0.9


def test_missing_features_are_filled_with_the_training_mean(raw_serving, raw_input_models):
    """A table model's raw row may lack values: JSON null, or NaN in Triton's binary
    tensors (its client's default). Each is the feature's training mean, as in training."""
    import httpx
    import torch
    import tritonclient.http as triton

    rows = load_breast_cancer().data[:6].astype(np.float32)
    rows[0, 3] = rows[2, [0, 7]] = rows[5, :] = np.nan
    body = infer_body(rows)
    body["inputs"][0]["data"] = [None if np.isnan(v) else v for v in rows.ravel().tolist()]
    url = f"{raw_serving}/v2/models/breast-cancer-mlp"
    response = httpx.post(f"{url}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    served = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")
    loaded = load_model(raw_input_models, "breast-cancer-mlp@staging")
    rule = loaded.card["schema"]["transform"]["standardize"]
    filled = np.where(np.isnan(rows), np.asarray(rule["mean"], np.float32), rows)
    with torch.inference_mode():
        offline = torch.softmax(
            loaded.module(torch.from_numpy(preprocess.features({"standardize": rule}, filled))),
            dim=-1,
        ).numpy()
    np.testing.assert_allclose(np.reshape(served["data"], offline.shape), offline, atol=1e-5)

    client = triton.InferenceServerClient(raw_serving.removeprefix("http://"))
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # binary, NaN and all
    result = client.infer("breast-cancer-mlp", [tensor])
    np.testing.assert_allclose(result.as_numpy("probabilities"), offline, atol=1e-5)
    client.close()
    notes = httpx.get(url).json()["parameters"]
    assert notes["missing_values"] == "null or NaN: the feature's training mean"
    assert notes["features"] == list(load_breast_cancer().feature_names)  # which goes where


def test_raw_text_gets_the_offline_models_labels(raw_serving, raw_input_models):
    import httpx
    import torch

    texts = reviews(40, seed=1).text.tolist()
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    response = httpx.post(f"{raw_serving}/v2/models/reviews-rnn/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    served = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
    loaded = load_model(raw_input_models, "reviews-rnn@staging")
    transform = loaded.card["schema"]["transform"]
    with torch.inference_mode():
        logits = loaded.module(torch.from_numpy(token_ids(transform, texts)))
    offline = [loaded.card["schema"]["classes"][i] for i in logits.argmax(1).tolist()]
    assert served == offline
    meta = httpx.get(f"{raw_serving}/v2/models/reviews-rnn").json()
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    wrong = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert httpx.post(f"{raw_serving}/v2/models/reviews-rnn/infer", json=wrong).status_code == 400


def people_val_rows() -> pd.DataFrame:
    """The validation rows of people-mlp's job, as its split chose them."""
    frame = people(2000, seed=0)
    return frame[in_validation(frame[["age", "income", "city", "label"]], 0.2, 0)]


def as_columns(frame: pd.DataFrame) -> dict:
    """A table as the Open Inference Protocol's JSON: one input per column, null for a
    missing value."""
    inputs = []
    for name, datatype in (("age", "FP32"), ("income", "FP32"), ("city", "BYTES")):
        data = [None if pd.isna(v) else v for v in frame[name].tolist()]
        inputs.append({"name": name, "datatype": datatype, "shape": [len(frame)], "data": data})
    return {"inputs": inputs}


def test_a_table_with_text_and_gaps_is_served_column_by_column(raw_serving, raw_input_models):
    import httpx
    import tritonclient.http as triton

    url = f"{raw_serving}/v2/models/people-mlp"
    meta = httpx.get(url).json()
    assert meta["inputs"] == [
        {"name": "age", "datatype": "FP32", "shape": [-1]},
        {"name": "income", "datatype": "FP32", "shape": [-1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
    ]
    val = people_val_rows()
    assert val.income.isna().any() and val.city.str.startswith("hamlet").any()
    response = httpx.post(f"{url}/infer", json=as_columns(val), timeout=30)
    assert response.status_code == 200, response.text
    labels = next(o for o in response.json()["outputs"] if o["name"] == "label")["data"]
    accuracy = np.mean(np.array(labels) == val.label.to_numpy())
    best = raw_input_models.read_json(
        raw_input_models.resolve("people-mlp@staging"), "metrics.json"
    )["best"]
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert accuracy > 0.85  # the city decides half the labels: it was learnt

    client = triton.InferenceServerClient(raw_serving.removeprefix("http://"))
    tensors = []
    for name, datatype, values in (
        ("age", "FP32", val.age.to_numpy(np.float32)),
        ("income", "FP32", val.income.to_numpy(np.float32)),  # NaN where missing
        ("city", "BYTES", np.array([c.encode() for c in val.city], dtype=np.object_)),
    ):
        tensor = triton.InferInput(name, [len(val)], datatype)
        tensor.set_data_from_numpy(values)  # binary: the client's default
        tensors.append(tensor)
    result = client.infer("people-mlp", tensors)
    assert [label.decode() for label in result.as_numpy("label")] == labels
    client.close()

    assert meta["parameters"]["inputs"] == "all"  # what `kiln bench` reads to send them all
    for body, headers in (
        (body_for(meta, batch=4), {"Content-Type": "application/json"}),
        binary_body_for(meta, batch=4),
    ):
        assert httpx.post(f"{url}/infer", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda inputs: inputs[:2], "input 'city' is missing"),
        (lambda inputs: [*inputs, {**inputs[0], "name": "height"}], "unknown input 'height'"),
        (lambda inputs: [*inputs, inputs[0]], "each input may come once"),
        (
            lambda inputs: [{**inputs[0], "shape": [1], "data": [30.0]}, *inputs[1:]],
            "give each as many rows",
        ),
    ],
    ids=["missing", "unknown", "twice", "lengths"],
)
def test_a_table_request_without_its_columns_says_which(raw_serving, change, message):
    import httpx

    body = as_columns(people_val_rows().head(3))
    body["inputs"] = change(body["inputs"])
    response = httpx.post(f"{raw_serving}/v2/models/people-mlp/infer", json=body, timeout=30)
    assert response.status_code == 400 and message in response.json()["error"]
