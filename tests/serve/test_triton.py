"""Triton's own HTTP client, with its defaults (binary tensors in and out) and with JSON,
against serving/digits.yaml on Ray Serve: what a Triton or KServe user runs unchanged."""

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import API_KEY, SECURED
from tests.serve.test_endpoints import validation_split

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def client(serving):
    client = triton.InferenceServerClient(serving.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def classify(client, name: str, x: np.ndarray, binary: bool, **kwargs) -> list[int]:
    labels = []
    for batch in np.array_split(x, 6):
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        outputs = None if binary else [triton.InferRequestedOutput("label", binary_data=False)]
        result = client.infer(name, [tensor], outputs=outputs, **kwargs)
        labels += [int(label) for label in result.as_numpy("label")]
    return labels


@pytest.mark.parametrize("binary", [True, False], ids=["defaults-binary", "json"])
def test_triton_client_classifies_at_the_registered_accuracy(client, digits_models, binary):
    data, best = validation_split(digits_models, "digits-cnn@production")
    labels = classify(client, "digits-cnn", data.x_val, binary)
    accuracy = float(np.mean(np.array(labels) == data.y_val))
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_triton_client_compressing_its_requests_gets_the_same_answers(client, compression):
    x = np.random.default_rng(0).random((12, 1, 8, 8), np.float32)
    plain = classify(client, "digits-cnn", x, binary=True)
    both = {"request_compression_algorithm": compression}
    both["response_compression_algorithm"] = compression  # answered plain: HTTP allows it
    assert classify(client, "digits-cnn", x, binary=True, **both) == plain
    assert classify(client, "digits-cnn", x, binary=False, **both) == plain


def top_classes(result, output: str = "probabilities") -> list[list[tuple[float, int, str]]]:
    """As Triton's image client reads a classification: "value:index:label" strings."""
    return [
        [(float(v), int(i), label) for v, i, label in (_text(c).split(":") for c in row)]
        for row in result.as_numpy(output)
    ]


def _text(element) -> str:  # BYTES are bytes in binary, str in JSON
    return element.decode() if isinstance(element, bytes) else element


def test_triton_client_asks_for_the_top_classes(client, digits_models):
    data, _ = validation_split(digits_models, "digits-cnn@production")
    x = data.x_val[:8]
    expected = classify(client, "digits-cnn", x, binary=True)
    for binary in (True, False):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        asked = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        top = top_classes(client.infer("digits-cnn", [tensor], outputs=[asked]))
        assert [row[0][1] for row in top] == expected  # the label's index comes first
        assert all(row[0][0] >= row[1][0] >= row[2][0] for row in top)
        assert all(label == str(i) for row in top for _, i, label in row)  # digits' names


def test_triton_client_health_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("digits-cnn") and client.is_model_ready("digits-cnn", "1")
    assert not client.is_model_ready("digits-cnn", "99")
    metadata = client.get_model_metadata("digits-cnn", "1")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert metadata["parameters"]["version"] == 1
    assert client.get_model_metadata("digits-cnn")["name"] == "digits-cnn"


def test_triton_client_lists_the_repository_and_loads_only_what_is_served(
    client, serving, serving_config
):
    from kiln.serve.control.deploy import MODEL_APP

    index = client.get_model_repository_index()  # Triton's client posts an empty body
    apps = serving_config["applications"]
    assert {m["name"] for m in index} == {a["name"] for a in apps if a["import_path"] == MODEL_APP}
    assert {m["state"] for m in index} == {"READY"}
    client.load_model("digits-cnn")  # served, so loaded: no error
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.load_model("nope")
    with pytest.raises(InferenceServerException, match="shutdown --only digits-cnn"):
        client.unload_model("digits-cnn")
    assert client.is_model_ready("digits-cnn")
    ready = httpx.post(f"{serving}/v2/repository/index", json={"ready": True}, timeout=30)
    assert ready.json() == index
    wrong = httpx.post(f"{serving}/v2/repository/index", json={"ready": "maybe"}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error"].startswith("ready:")


def test_triton_client_reads_the_model_configuration_perf_analyzer_needs(client):
    extensions = set(client.get_server_metadata()["extensions"])
    assert {"classification", "model_configuration", "statistics"} <= extensions
    config = client.get_model_config("digits-cnn")
    assert config["max_batch_size"] == 4 * 2**20 // (64 * 4)  # the body limit, in examples
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8], "optional": False}
    ]
    assert [o["name"] for o in config["output"]] == ["probabilities", "label"]
    assert client.get_model_config("digits-cnn", "1")["name"] == "digits-cnn"
    gan = client.get_model_config("digits-gan")  # seed or latent, and labels if wanted
    optional = {i["name"]: i["optional"] for i in gan["input"]}
    assert optional == {"seed": True, "latent": True, "labels": True}
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("digits-cnn", "99")
    assert missing.value.status() == "404"


def test_triton_client_reads_statistics_that_count_its_requests(client):
    def statistics() -> dict:
        (one,) = client.get_inference_statistics("digits-cnn", "1")["model_stats"]
        return one

    before = statistics()
    x = np.random.default_rng(1).random((4, 1, 8, 8), np.float32)
    for _ in range(3):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("digits-cnn", [tensor], model_version="1")
    unknown = triton.InferInput("nope", [1], "FP32")
    unknown.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException):  # a request that fails counts as failed
        client.infer("digits-cnn", [unknown], model_version="1")
    after = statistics()

    def moved(*path: str) -> int:
        old, new = before, after
        for key in path:
            old, new = old[key], new[key]
        return new - old

    assert moved("inference_count") == 12 and 1 <= moved("execution_count") <= 3
    assert moved("inference_stats", "success", "count") == 3
    assert moved("inference_stats", "fail", "count") == 1
    for step in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert moved("inference_stats", step, "count") == 3, step
    assert moved("inference_stats", "compute_infer", "ns") > 0
    assert moved("inference_stats", "success", "ns") > moved(
        "inference_stats", "compute_infer", "ns"
    )
    every = client.get_inference_statistics("digits-cnn")["model_stats"]
    assert "1" in [s["version"] for s in every]


def test_triton_client_with_and_without_the_key(client):
    x = np.zeros((6, 1, 8, 8), np.float32)  # one example per request
    right = {"Authorization": f"Bearer {API_KEY}"}
    assert len(classify(client, SECURED, x, binary=True, headers=right)) == 6
    with pytest.raises(InferenceServerException) as refused:
        classify(client, SECURED, x, binary=True, headers={"Authorization": "Bearer wrong"})
    assert refused.value.status() == "401"
