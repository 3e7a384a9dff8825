"""Pure logic of serving: protocol decoding, API keys, and serving-config checks (no Ray)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from kiln.errors import ModelNotFoundError, RequestError, SpecError
from kiln.serve.replica.auth import ApiKeys
from kiln.serve.replica.protocol import (
    InferenceRequest,
    RequestInput,
    TensorMetadata,
    classified,
    decode,
    encode,
    parse_request,
    pick_input,
)
from tests.conftest import ROOT

IMAGE = TensorMetadata(name="input", datatype="FP32", shape=[-1, 1, 8, 8])


def given(**changes) -> RequestInput:
    fields = {"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": [0.5] * 128}
    return RequestInput(**{**fields, **changes})


def test_decode_flat_and_nested_data():
    assert decode(given(), IMAGE).shape == (2, 1, 8, 8)
    nested = np.full((2, 1, 8, 8), 0.5).tolist()
    np.testing.assert_array_equal(decode(given(data=nested), IMAGE), decode(given(), IMAGE))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"datatype": "FP64"}, "expected FP32"),
        ({"shape": [2, 64]}, "expected [-1, 1, 8, 8]"),
        ({"shape": [2, 1, 8, 9]}, "expected [-1, 1, 8, 8]"),
        ({"shape": [0, 1, 8, 8], "data": []}, "empty batch"),
        ({"data": [0.5] * 127}, "do not fill"),
        ({"data": [[0.5, 0.5], [0.5]]}, "not all FP32"),
        ({"data": ["a"] * 128}, "not all FP32"),
        ({"data": [float("nan")] * 128}, "NaN or infinity"),
        ({"data": [float("inf")] * 128}, "NaN or infinity"),
    ],
)
def test_decode_refuses_with_what_was_expected(changes, message):
    with pytest.raises(RequestError, match=message.replace("[", r"\[")):
        decode(given(**changes), IMAGE)


def test_pick_input_among_alternatives_with_its_parameters():
    seed = TensorMetadata(name="seed", datatype="INT64", shape=[-1])
    chosen = given(name="seed", datatype="INT64", shape=[3], data=[1, 2, 3])
    chosen.parameters = {"sample_rate": 16000}
    request = InferenceRequest(inputs=[chosen], parameters={"sample_rate": 8000, "other": 1})
    index, array, parameters = pick_input(request, [IMAGE, seed])
    assert index == 1 and array.dtype == np.int64
    assert parameters == {"sample_rate": 16000, "other": 1}  # the input's win over the request's
    with pytest.raises(RequestError, match="'input' or 'seed'"):
        pick_input(InferenceRequest(inputs=[given(name="x")]), [IMAGE, seed])


def test_parse_request_whatever_the_content_type_says():
    assert (
        parse_request(b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}')
        .inputs[0]
        .name
        == "a"
    )
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_request(b"{")
    with pytest.raises(RequestError, match="inputs.0.shape"):
        parse_request(b'{"inputs": [{"name": "a", "datatype": "FP32", "data": [1]}]}')


def test_encode_names_datatypes():
    assert encode("p", np.zeros((2, 3), np.float32)).datatype == "FP32"
    label = encode("label", np.array(["7", "1"], dtype=object))
    assert (label.datatype, label.shape, label.data) == ("BYTES", [2], ["7", "1"])


def classify(outputs: dict, asked: dict, labels=None) -> dict:
    request = InferenceRequest.model_validate(
        {
            "inputs": [given().model_dump()],
            "outputs": [{"name": n, "parameters": p} for n, p in asked.items()],
        }
    )
    return classified(request, outputs, lambda name: labels if name == "probabilities" else None)


def test_classification_answers_the_top_classes_largest_first_with_their_labels():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    outputs = {"probabilities": probabilities, "label": np.array(["b", "a"], object)}
    answer = classify(outputs, {"probabilities": {"classification": 2}}, ["a", "b", "c"])
    assert answer["probabilities"].tolist() == [
        ["0.700000:1:b", "0.200000:2:c"],
        ["0.500000:0:a", "0.300000:2:c"],
    ]
    assert answer["label"] is outputs["label"] and outputs["probabilities"] is probabilities
    everything = classify(outputs, {"probabilities": {"classification": 9}}, ["a", "b", "c"])
    assert everything["probabilities"].shape == (2, 3)  # a model's classes, at most
    values = {"forecast": np.array([[3.0], [1.5]], np.float32)}  # no labels: value:index
    assert classify(values, {"forecast": {"classification": 1}})["forecast"].tolist() == [
        ["3.000000:0"],
        ["1.500000:0"],
    ]
    assert classify(outputs, {"probabilities": None})["probabilities"] is probabilities
    integral = classify(outputs, {"probabilities": {"classification": 1.0}}, ["a", "b", "c"])
    assert integral["probabilities"].tolist() == [["0.700000:1:b"], ["0.500000:0:a"]]


@pytest.mark.parametrize(
    "asked, message",
    [
        ({"probabilities": {"classification": 0}}, "a count of classes"),
        ({"probabilities": {"classification": "2"}}, "a count of classes"),
        ({"probabilities": {"classification": 1.5}}, "a count of classes"),
        ({"probabilities": {"classification": True}}, "a count of classes"),
        ({"label": {"classification": 1}}, "only numbers classify"),
    ],
)
def test_classification_refuses_what_it_cannot_count(asked, message):
    outputs = {"probabilities": np.eye(2, dtype=np.float32), "label": np.array(["a", "b"], object)}
    with pytest.raises(RequestError, match=message):
        classify(outputs, asked)


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("from-file\n\n")
    monkeypatch.setenv("KILN_API_KEYS", "one, two")
    keys = ApiKeys.load(str(keys_file))
    assert all(keys.matches(k) for k in ("one", "two", "from-file"))
    assert not keys.matches("") and not keys.matches("on") and not keys.open
    monkeypatch.delenv("KILN_API_KEYS")
    assert ApiKeys.load().open


@pytest.fixture
def config_file(tmp_path, digits_cnn):
    def write(mutate) -> str:
        config = yaml.safe_load((ROOT / "serving/digits.yaml").read_text())
        config["applications"] = config["applications"][:2]  # index + digits-cnn
        config["applications"][1]["args"]["model"] = "digits-cnn@1"
        mutate(config["applications"][1])
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def test_config_checks_before_deploying(config_file):
    from kiln.serve.control.deploy import load_config

    config = load_config(config_file(lambda app: None))
    assert config["applications"][1]["args"]["registry"].endswith("registry")
    cases = {
        "route_prefix must be /v2/models/digits-cnn": lambda a: a.update(route_prefix="/x"),
        "args.modle: unknown key": lambda a: a["args"].update(modle=1),
        "max_ongoing_requests (4) must be at least max_batch_size (16)": (
            lambda a: a["deployments"][0].update(max_ongoing_requests=4)
        ),
        "user_config.max_batch_size": lambda a: a["deployments"][0].update(
            user_config={"max_batch_size": 0}
        ),
    }
    for message, mutate in cases.items():
        with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(config_file(mutate))
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        load_config(config_file(lambda a: a["args"].update(model="nope@production")))


def test_the_grpc_gateway_is_checked_before_deploying(tmp_path, config_file):
    from kiln.serve.control.deploy import grpc_gateway_ports, load_config

    path = config_file(lambda app: None)
    assert grpc_gateway_ports(load_config(path, grpc_gateway_port=18001)) == [18001]
    config = yaml.safe_load(Path(path).read_text())
    cases = {
        "args.grpc_gateway_port 9000 is the config's HTTP or gRPC port": (
            lambda c: c["applications"][0]["args"].update(grpc_gateway_port=9000)
        ),
        "args.grpc_gateway_port relays to Serve's gRPC ingress": (lambda c: c.pop("grpc_options")),
        "args.grpc_gateway_port": lambda c: c["applications"][0]["args"].update(
            grpc_gateway_port="grpc"
        ),
    }
    for message, mutate in cases.items():
        changed = yaml.safe_load(yaml.safe_dump(config))
        mutate(changed)
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(changed))
        with pytest.raises(SpecError, match=message.replace("(", r"\(")):
            load_config(tmp_path / "gateway.yaml")


def test_an_autoscaling_target_below_the_batch_size_is_flagged(config_file):
    from kiln.serve.control.deploy import autoscaling_advice, load_config

    assert autoscaling_advice(load_config(config_file(lambda app: None))) == []  # as shipped

    def low_target(app: dict) -> None:
        app["deployments"][0]["autoscaling_config"]["target_ongoing_requests"] = 2

    assert autoscaling_advice(load_config(config_file(low_target))) == [
        "digits-cnn: target_ongoing_requests (2) is below max_batch_size (16); "
        "replicas are added before batches fill"
    ]
