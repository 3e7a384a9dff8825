"""Triton's own gRPC client against serving/digits.yaml on Ray Serve's gRPC ingress: the same
models, the same answers, and the REST path's errors as gRPC status codes. Each call names its
model's application in the `application` metadata, which Ray Serve's ingress routes by; on the
index's gRPC gateway, the client's defaults (no metadata) reach each model all the same."""

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import API_KEY, GATEWAY_PORT, GRPC_PORT, SECURED
from tests.serve.test_endpoints import validation_split

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CNN = {"application": "digits-cnn"}


@pytest.fixture
def client(serving):
    client = triton.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    yield client
    client.close()


def classify(client, name: str, x: np.ndarray, headers: dict) -> list[int]:
    labels = []
    for batch in np.array_split(x, min(6, len(x))):
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)  # raw_input_contents, as Triton's client sends
        result = client.infer(name, [tensor], headers=headers)
        labels += [int(label) for label in result.as_numpy("label")]
    return labels


def test_triton_grpc_client_classifies_at_the_registered_accuracy(client, digits_models):
    data, best = validation_split(digits_models, "digits-cnn@production")
    labels = classify(client, "digits-cnn", data.x_val, CNN)
    accuracy = float(np.mean(np.array(labels) == data.y_val))
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-9)


def test_triton_grpc_client_asks_for_the_top_classes(client, digits_models):
    from tests.serve.test_triton import top_classes

    data, _ = validation_split(digits_models, "digits-cnn@production")
    x = data.x_val[:8]
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    asked = triton.InferRequestedOutput("probabilities", class_count=2)
    top = top_classes(client.infer("digits-cnn", [tensor], outputs=[asked], headers=CNN))
    assert [row[0][1] for row in top] == classify(client, "digits-cnn", x, CNN)
    assert all(len(row) == 2 and row[0][0] >= row[1][0] for row in top)


def test_triton_grpc_client_reads_the_configuration_and_statistics(client):
    """Kiln's messages carry Triton's field numbers: Triton's own stubs parse them."""
    config = client.get_model_config("digits-cnn", headers=CNN).config
    assert config.name == "digits-cnn" and config.max_batch_size == 4 * 2**20 // (64 * 4)
    (image,) = config.input
    assert (image.name, image.data_type, list(image.dims)) == ("input", 11, [1, 8, 8])  # FP32
    assert [o.name for o in config.output] == ["probabilities", "label"]

    def statistics():
        (one,) = client.get_inference_statistics("digits-cnn", "1", headers=CNN).model_stats
        return one

    before = statistics()
    classify(client, "digits-cnn", np.zeros((3, 1, 8, 8), np.float32), CNN)  # 3 requests
    after = statistics()
    assert after.version == "1" and after.inference_count - before.inference_count == 3
    for step in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        moved = (
            getattr(after.inference_stats, step).count - getattr(before.inference_stats, step).count
        )
        assert moved == 3, step
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("digits-cnn", "99", headers=CNN)
    assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_typed_contents_answer_as_raw_ones(serving, digits_models):
    """Kiln's own stubs send `contents.fp32_contents`, the protocol's other tensor form."""
    from kiln.serve.replica.protos import open_inference_pb2 as pb
    from kiln.serve.replica.protos.open_inference_pb2_grpc import GRPCInferenceServiceStub

    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="digits-cnn", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        answer = GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(CNN.items()))
    assert answer.id == "typed" and answer.model_version == "1"
    assert [o.name for o in answer.outputs] == ["probabilities", "label"]
    probabilities = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_triton_grpc_client_draws_the_digit_asked_for_as_rest_does(client, http):
    """Two raw inputs, as Triton's client sends them: seeds and the conditional GAN's labels."""
    seeds, labels = np.array([3, 4, 5], np.int64), np.array([7, 7, 2], np.int64)
    inputs = []
    for name, values in (("seed", seeds), ("labels", labels)):
        inputs.append(triton.InferInput(name, list(values.shape), "INT64"))
        inputs[-1].set_data_from_numpy(values)
    drawn = client.infer("digits-gan", inputs, headers={"application": "digits-gan"})
    body = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [3], "data": v.tolist()}
            for n, v in (("seed", seeds), ("labels", labels))
        ]
    }
    rest = http.post("/v2/models/digits-gan/infer", json=body).json()["outputs"][0]
    assert drawn.as_numpy("images").shape == (3, 1, 8, 8)
    np.testing.assert_allclose(drawn.as_numpy("images").ravel(), rest["data"], atol=1e-6)


def test_triton_grpc_client_health_metadata_and_readiness(client):
    assert client.is_server_live(headers=CNN) and client.is_server_ready(headers=CNN)
    assert "binary_tensor_data" in client.get_server_metadata(headers=CNN).extensions
    assert client.is_model_ready("digits-cnn", headers=CNN)
    assert client.is_model_ready("digits-cnn", "1", headers=CNN)
    assert not client.is_model_ready("digits-cnn", "99", headers=CNN)
    metadata = client.get_model_metadata("digits-cnn", "1", headers=CNN, as_json=True)
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}
    ]
    assert metadata["versions"] == ["1"] and metadata["platform"].startswith("pytorch_")


def test_errors_are_grpc_status_codes_with_the_rest_messages(client):
    x = np.zeros((2, 1, 8, 8), np.float32)
    secured = {"application": SECURED}
    right = {**secured, "authorization": f"Bearer {API_KEY}"}
    assert len(classify(client, SECURED, x, right)) == 2
    wrong_key = {**secured, "authorization": "Bearer wrong"}
    assert status_of(lambda: classify(client, SECURED, x, secured)) == "UNAUTHENTICATED"
    assert client.is_model_ready(SECURED, headers=secured)  # readiness needs no key, as over REST
    assert status_of(lambda: classify(client, SECURED, x, wrong_key)) == "UNAUTHENTICATED"

    wrong = triton.InferInput("input", [2, 64], "FP32")
    wrong.set_data_from_numpy(x.reshape(2, 64))
    error = raised(lambda: client.infer("digits-cnn", [wrong], headers=CNN))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input' has shape [2, 64]; expected [-1, 1, 8, 8]" in error.message()
    assert status_of(lambda: client.infer("digits-cnn", [wrong], "7", headers=CNN)) == "NOT_FOUND"
    # The application and the model must agree; an unknown or missing application is Ray's 404.
    assert status_of(lambda: classify(client, "digits-mlp", x, CNN)) == "NOT_FOUND"
    assert status_of(lambda: classify(client, "nope", x, {"application": "nope"})) == "NOT_FOUND"
    assert status_of(lambda: classify(client, "digits-cnn", x, {})) == "NOT_FOUND"


def test_triton_grpc_client_with_its_defaults_reaches_every_model_through_the_gateway(
    serving, digits_models
):
    """No `application` metadata, as Triton's client sends by default: on Serve's own port
    that is Ray's NOT_FOUND while several models run; the gateway routes by the model named."""
    client = triton.InferenceServerClient(f"127.0.0.1:{GATEWAY_PORT}")
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    data, best = validation_split(digits_models, "digits-cnn@production")
    labels = classify(client, "digits-cnn", data.x_val, {})
    assert np.mean(np.array(labels) == data.y_val) == pytest.approx(best["val_accuracy"], abs=1e-9)
    x = data.x_val[:6]
    for model in ("digits-mlp", "digits-rnn"):  # the same channel, other applications
        assert client.is_model_ready(model) and client.get_model_config(model).config.name == model
        (given,) = client.get_model_metadata(model).inputs
        rows = x.reshape(len(x), *[int(n) for n in given.shape[1:]])
        named = {"application": model}
        assert classify(client, model, rows, {}) == classify(client, model, rows, named)

    # The replica's answers come back as it gave them: status, details, metadata sent on.
    wrong = triton.InferInput("input", [2, 64], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 64), np.float32))
    error = raised(lambda: client.infer("digits-cnn", [wrong]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input' has shape [2, 64]; expected [-1, 1, 8, 8]" in error.message()
    assert status_of(lambda: classify(client, SECURED, x, {})) == "UNAUTHENTICATED"
    assert len(classify(client, SECURED, x, {"authorization": f"Bearer {API_KEY}"})) == len(x)
    assert status_of(lambda: classify(client, "nope", x, {})) == "NOT_FOUND"
    assert status_of(lambda: classify(client, "", x, {})) == "INVALID_ARGUMENT"
    # A call that names its application keeps it (and the model must agree, as on Serve's port).
    assert status_of(lambda: classify(client, "digits-mlp", x, CNN)) == "NOT_FOUND"
    client.close()


def test_triton_grpc_client_lists_the_repository_and_loads_only_what_is_served(
    serving, serving_config
):
    """The model repository over gRPC answers as over REST (test_triton.py), through the
    gateway with the client's defaults and on Serve's port from any application."""
    from kiln.serve.control.deploy import MODEL_APP

    apps = serving_config["applications"]
    models = {a["name"] for a in apps if a["import_path"] == MODEL_APP}
    gateway = triton.InferenceServerClient(f"127.0.0.1:{GATEWAY_PORT}")
    direct = triton.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    for client, headers in ((gateway, {}), (direct, CNN), (direct, {"application": "kiln"})):
        index = client.get_model_repository_index(headers=headers, as_json=True)["models"]
        assert {m["name"] for m in index} == models
        assert {m["state"] for m in index} == {"READY"}
        client.load_model("digits-cnn", headers=headers)  # served, so loaded: no error
    assert status_of(lambda: gateway.load_model("nope")) == "NOT_FOUND"
    assert "no model named 'nope'" in raised(lambda: gateway.load_model("nope")).message()
    refused = raised(lambda: gateway.unload_model("digits-cnn"))
    assert refused.status() == "StatusCode.PERMISSION_DENIED"
    assert "kiln serve shutdown --only digits-cnn" in refused.message()
    assert status_of(lambda: gateway.unload_model("nope")) == "NOT_FOUND"
    assert gateway.is_model_ready("digits-cnn")
    gateway.close()
    direct.close()


def raised(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def status_of(call) -> str:
    return str(raised(call).status()).removeprefix("StatusCode.")
