"""The Open Inference Protocol over real HTTP, against serving/digits.yaml on Ray Serve."""

import json

import numpy as np
import pytest

from kiln.data import build
from kiln.spec import parse_spec
from tests.serve.conftest import API_KEY, SECURED, infer_body

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def validation_split(registry, ref: str):
    version = registry.resolve(ref)
    import yaml

    spec = parse_spec(yaml.safe_load(registry.read(version, "spec.yaml")), ref)
    data = build(spec.data, spec.task)
    return data, registry.read_json(version, "metrics.json")["best"]


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "digits-rnn"])
def test_accuracy_over_http_equals_accuracy_at_training(http, digits_models, name):
    data, best = validation_split(digits_models, f"{name}@production")
    labels = []
    for batch in np.array_split(data.x_val, 6):
        response = http.post(f"/v2/models/{name}/infer", json=infer_body(batch))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == name and body["model_version"] == "1"
        label = next(o for o in body["outputs"] if o["name"] == "label")
        labels += [int(v) for v in label["data"]]
    accuracy = float(np.mean(np.array(labels) == data.y_val))
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)


def test_health_and_server_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200
    assert set(ready.json()["models"]) >= {"digits-cnn", "digits-mlp", "digits-rnn", "digits-gan"}
    assert http.get("/v2").json()["name"] == "kiln"
    docs = http.get("/openapi.json").json()
    assert {"/v2", "/v2/health/live", "/v2/health/ready"} <= set(docs["paths"])
    assert "/v2/models/{name}/docs" in docs["info"]["description"]  # each model's own
    assert http.get("/docs").status_code == 200
    assert "/infer" in http.get("/v2/models/digits-cnn/openapi.json").json()["paths"]


def test_model_metadata_and_readiness(http, digits_models):
    meta = http.get("/v2/models/digits-cnn").json()
    assert meta["name"] == "digits-cnn"
    assert meta["versions"] == [str(v) for v in digits_models.versions("digits-cnn")]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert meta["parameters"]["follows"] == "digits-cnn@production"
    assert http.get("/v2/models/digits-cnn/ready").status_code == 200
    rnn = http.get("/v2/models/digits-rnn").json()
    assert rnn["inputs"][0]["shape"] == [-1, 8, 8]


def test_each_model_documents_its_own_input(http):
    """A client generated from a model's OpenAPI document sends the input it takes."""
    gan = [("latent", "FP32", [None, 32]), ("seed", "INT64", [None]), ("labels", "INT64", [None])]
    for name, tensors, most in [
        ("digits-cnn", [("input", "FP32", [None, 1, 8, 8])], 1),
        ("digits-gan", gan, 2),  # labels may come beside latent or seed
    ]:
        schemas = http.get(f"/v2/models/{name}/openapi.json").json()["components"]["schemas"]
        assert schemas["InferenceRequest"]["properties"]["inputs"]["maxItems"] == most
        documented = []
        for choice in schemas["RequestInput"]["oneOf"]:
            shape = choice["properties"]["shape"]["prefixItems"]
            documented.append(
                (
                    choice["properties"]["name"]["const"],
                    choice["properties"]["datatype"]["const"],
                    [d.get("const") for d in shape],
                )
            )
        assert documented == tensors


def test_unknown_model_and_version_are_404(http):
    body = infer_body(np.zeros((1, 1, 8, 8), np.float32))
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/versions/1",
        "/v2/models/nope/versions/1/ready",
    ]:
        response = http.get(path)
        assert response.status_code == 404 and "nope" in response.json()["error"]
    assert http.post("/v2/models/nope/infer", json=body).status_code == 404
    missing = http.post("/v2/models/digits-cnn/versions/99/infer", json=body)
    assert missing.status_code == 404 and "no version 99" in missing.json()["error"]
    for path in ["/v2/models/digits-cnn/versions/99", "/v2/models/digits-cnn/versions/99/ready"]:
        assert http.get(path).status_code == 404


def good_input() -> dict:
    return {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}


BAD_REQUESTS = {
    "not JSON": ("{bad", "not valid JSON"),
    "no inputs": ({"inputs": []}, "inputs"),
    "wrong shape": ({"inputs": [{**good_input(), "shape": [1, 64]}]}, "expected [-1, 1, 8, 8]"),
    "wrong datatype": ({"inputs": [{**good_input(), "datatype": "INT64"}]}, "expected FP32"),
    "too few values": ({"inputs": [{**good_input(), "data": [0.5] * 10}]}, "do not fill"),
    "strings as data": ({"inputs": [{**good_input(), "data": ["x"] * 64}]}, "not all FP32"),
    "empty batch": (
        {"inputs": [{**good_input(), "shape": [0, 1, 8, 8], "data": []}]},
        "empty batch",
    ),
    "unknown input": ({"inputs": [{**good_input(), "name": "pixels"}]}, "unknown input"),
    "unknown output": ({"inputs": [good_input()], "outputs": [{"name": "x"}]}, "unknown output"),
    "two inputs": ({"inputs": [good_input(), good_input()]}, "exactly one input"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_400_saying_what_was_expected(http, case):
    body, expected = BAD_REQUESTS[case]
    content = body if isinstance(body, str) else json.dumps(body)
    response = http.post("/v2/models/digits-cnn/infer", content=content)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def test_nan_and_infinity_are_refused(http):
    for value in ("NaN", "Infinity"):
        data = ", ".join(["0.5"] * 63 + [value])
        content = (
            '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], '
            f'"data": [{data}]}}]}}'
        )
        response = http.post("/v2/models/digits-cnn/infer", content=content)
        assert response.status_code == 400, response.text


def test_oversized_body_is_413(http):
    huge = infer_body(np.zeros((9000, 1, 8, 8), np.float32))  # ~2.9 MB of "0.0, "
    huge["inputs"][0]["data"] = [0.123456789] * (9000 * 64)  # > 4 MiB
    response = http.post("/v2/models/digits-cnn/infer", json=huge)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_requested_outputs_and_request_id(http):
    body = {"id": "r-42", "inputs": [good_input()], "outputs": [{"name": "label"}]}
    answer = http.post("/v2/models/digits-cnn/infer", json=body).json()
    assert answer["id"] == "r-42"
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["datatype"] == "BYTES"


def test_gan_draws_the_same_digit_for_the_same_seed_and_label(http):
    def draw(seeds, labels=None, status=200):
        inputs = [infer_body(np.array(seeds, np.int64), name="seed", datatype="INT64")["inputs"][0]]
        if labels is not None:
            labels = np.array(labels, np.int64)
            inputs.append(infer_body(labels, name="labels", datatype="INT64")["inputs"][0])
        response = http.post("/v2/models/digits-gan/infer", json={"inputs": inputs})
        assert response.status_code == status, response.text
        if status != 200:
            return response.json()["error"]
        images = response.json()["outputs"][0]
        return np.array(images["data"]).reshape(images["shape"])

    first, again = draw([7, 8], [3, 3]), draw([7], [3])
    assert first.shape == (2, 1, 8, 8) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(draw([7], [3]), again)  # the same request: the same image
    np.testing.assert_allclose(first[0], again[0], atol=1e-6)  # (in another batch: float noise)
    assert not np.allclose(first[0], first[1])
    np.testing.assert_allclose(draw([7, 8], [3]), first, atol=1e-6)  # one label for them all
    assert not np.allclose(draw([7], [5])[0], first[0])  # the label steers
    np.testing.assert_array_equal(draw([7]), draw([7]))  # no label: the noise picks one
    for labels in ([10], [-1]):
        assert "labels must lie in [0, 10)" in draw([7], labels, status=400)
    assert "one per image" in draw([1, 2, 3], [1, 2], status=400)
    latent = infer_body(np.zeros((3, 32), np.float32), name="latent")
    images = http.post("/v2/models/digits-gan/infer", json=latent).json()["outputs"][0]
    assert images["shape"] == [3, 1, 8, 8]
    meta = http.get("/v2/models/digits-gan").json()
    assert meta["inputs"][-1] == {"name": "labels", "datatype": "INT64", "shape": [-1]}
    assert meta["parameters"]["labels"]["7"] == "7"


def test_api_keys(http):
    path = f"/v2/models/{SECURED}/infer"
    body = infer_body(np.zeros((1, 1, 8, 8), np.float32))
    assert http.post(path, json=body).status_code == 401
    wrong = http.post(path, json=body, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert http.get(f"/v2/models/{SECURED}").status_code == 401
    right = {"Authorization": f"Bearer {API_KEY}"}
    assert http.post(path, json=body, headers=right).status_code == 200
    assert http.get(f"/v2/models/{SECURED}", headers=right).status_code == 200
    # health stays open
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get(f"/v2/models/{SECURED}/ready").status_code == 200
