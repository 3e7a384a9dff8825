"""KServe V1 (`/v1/models/NAME:predict`, {"instances": [...]}), the protocol KServe's SDK
speaks by default: the translation on its own, then over real HTTP against serving/digits.yaml,
answering as the Open Inference Protocol does for the same examples."""

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kiln.errors import RequestError
from kiln.serve.replica.kserve_v1 import predictions, to_request
from kiln.serve.replica.protocol import TensorMetadata, decode
from tests.conftest import speech_corpus
from tests.serve.conftest import API_KEY, SECURED, infer_body
from tests.serve.test_endpoints import validation_split

IMAGE = TensorMetadata(name="input", datatype="FP32", shape=[-1, 1, 8, 8])
FILE = TensorMetadata(name="image", datatype="BYTES", shape=[-1])
COLUMNS = [
    TensorMetadata(name="age", datatype="FP32", shape=[-1]),
    TensorMetadata(name="city", datatype="BYTES", shape=[-1]),
]


def body(instances) -> bytes:
    return json.dumps({"instances": instances}).encode()


@pytest.mark.parametrize("nesting", ["flat", "rows", "exact"])
def test_instances_take_the_inputs_shape_however_they_nest(nesting):
    images = np.arange(2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)
    sent = {"flat": images.reshape(2, 64), "rows": images.reshape(2, 8, 8), "exact": images}
    request = to_request(body(sent[nesting].tolist()), [IMAGE, FILE])
    (given,) = request.inputs
    assert given.name == "input" and given.shape == [2, 1, 8, 8]
    np.testing.assert_array_equal(decode(given, IMAGE), images)


def test_text_and_tensorflows_b64_values_go_to_the_files_input():
    png = base64.b64encode(b"\x89PNG...").decode()
    for instances in ([png, png], [{"b64": png}, {"b64": png}]):
        (given,) = to_request(body(instances), [IMAGE, FILE]).inputs
        assert given.name == "image" and given.shape == [2] and given.data == [png, png]


def test_inputs_in_the_row_format_are_instances_too():
    """KServe's V1 servers take `inputs` beside `instances`; the Open Inference Protocol's
    tensors under the same key are told apart."""
    rows = [[0.5] * 64]
    (given,) = to_request(json.dumps({"inputs": rows}).encode(), [IMAGE]).inputs
    assert given.shape == [1, 1, 8, 8]
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows[0]}]}
    with pytest.raises(RequestError, match="goes to /v2/models/NAME/infer"):
        to_request(json.dumps(v2).encode(), [IMAGE])


def test_objects_name_a_tables_columns_and_may_leave_values_out():
    instances = [{"age": 31, "city": "Oslo"}, {"age": None, "city": "Bergen"}]
    request = to_request(body(instances), COLUMNS, by_name=True)
    assert [(i.name, i.shape, i.data) for i in request.inputs] == [
        ("age", [2], [31, None]),
        ("city", [2], ["Oslo", "Bergen"]),
    ]


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32"}]}', "goes to /v2/models/NAME/infer"),
        (b'{"instances": []}', "a list of at least one example"),
        (b'{"instances": 3}', "a list of at least one example"),
        (body([[1.0] * 64, [1.0] * 63]), "instances differ in shape"),
        (body([{"input": [0] * 64}, [0] * 64]), "either all objects"),
        (body([{"size": 3}]), "unknown input 'size'; this model takes input, image"),
        (body([{"input": [0] * 64}, {"image": "x"}]), "instance 1 names other inputs"),
    ],
)
def test_bad_bodies_say_what_is_wrong(sent, error):
    with pytest.raises(RequestError, match=error):
        to_request(sent, [IMAGE, FILE])


def test_a_table_needs_its_columns_by_name():
    with pytest.raises(RequestError, match="takes its inputs by name: send objects of age, city"):
        to_request(body([[31, "Oslo"]]), COLUMNS, by_name=True)


def test_predictions_are_the_one_output_or_objects_of_them():
    labels = np.array(["3", "7"], dtype=object)
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert predictions({"label": labels}) == ["3", "7"]
    both = predictions({"probabilities": scores, "label": labels})
    assert both[1]["label"] == "7" and both[1]["probabilities"] == pytest.approx([0.8, 0.2])
    files = np.array([b"\x00\x01"], dtype=object)
    assert predictions({"png": files}) == [{"b64": "AAE="}]


# --- over HTTP: the index relays to the model's replica ----------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_v1_predictions_match_the_open_inference_protocols(http, digits_models):
    data, best = validation_split(digits_models, "digits-cnn@production")
    x = data.x_val[:60]
    v2 = http.post("/v2/models/digits-cnn/infer", json=infer_body(x)).json()
    v2_labels = next(o for o in v2["outputs"] if o["name"] == "label")["data"]
    flat = x.reshape(len(x), -1).tolist()  # 64 numbers an image, as a v1 client sends them
    answer = http.post("/v1/models/digits-cnn:predict", json={"instances": flat})
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    assert [p["label"] for p in served] == v2_labels
    assert np.allclose([sum(p["probabilities"]) for p in served], 1, atol=1e-5)
    labels = []  # the whole split, as accurate as at training
    for batch in np.array_split(data.x_val, 6):
        answer = http.post("/v1/models/digits-cnn:predict", json={"instances": batch.tolist()})
        labels += [int(p["label"]) for p in answer.json()["predictions"]]
    assert np.mean(np.array(labels) == data.y_val) == pytest.approx(best["val_accuracy"])


@pytest.mark.ray
@pytest.mark.slow
def test_v1_readiness_listing_and_errors(http):
    assert http.get("/").json()["status"] == "alive"  # KServe V1's liveness
    assert http.get("/v1/models/digits-cnn").json() == {"name": "digits-cnn", "ready": True}
    assert {"digits-cnn", "digits-gan", SECURED} <= set(http.get("/v1/models").json()["models"])
    missing = http.post("/v1/models/nope:predict", json={"instances": [[0.0] * 64]})
    assert missing.status_code == 404 and "no model named 'nope'" in missing.json()["error"]
    assert http.get("/v1/models/nope").status_code == 404
    v2_body = http.post("/v1/models/digits-cnn:predict", json=infer_body(np.zeros((1, 64))))
    assert v2_body.status_code == 400 and "/v2/models/NAME/infer" in v2_body.json()["error"]
    wrong = http.post("/v1/models/digits-cnn:predict", json={"instances": [[0.0] * 63]})
    assert wrong.status_code == 400 and "shape [1, 63]" in wrong.json()["error"]
    big = http.post("/v1/models/digits-cnn:predict", content=b"[" + b"0," * 3_000_000 + b"0]")
    assert big.status_code == 413


@pytest.mark.ray
@pytest.mark.slow
def test_v1_keys_generators_and_recordings(http):
    path, zeros = f"/v1/models/{SECURED}:predict", {"instances": [[0.0] * 64]}
    assert http.post(path, json=zeros).status_code == 401
    assert http.post(path, json=zeros, headers={"Authorization": "Bearer wrong"}).status_code == 401
    right = {"Authorization": f"Bearer {API_KEY}"}
    assert http.post(path, json=zeros, headers=right).status_code == 200
    drawn = http.post(
        "/v1/models/digits-gan:predict", json={"instances": [{"seed": 7, "labels": 3}]}
    )
    assert np.array(drawn.json()["predictions"]).shape == (1, 1, 8, 8)
    many = {"instances": [{"seed": seed} for seed in range(8000)]}  # answered in 10 MB of JSON
    drawn = http.post("/v1/models/digits-gan:predict", json=many)
    assert drawn.status_code == 200 and len(drawn.content) > 4 * 2**20
    assert len(drawn.json()["predictions"]) == 8000
    files = sorted(speech_corpus().glob("*.wav"))[:5]
    wavs = [base64.b64encode(f.read_bytes()).decode() for f in files]
    v2_body = {"inputs": [{"name": "wav", "datatype": "BYTES", "shape": [5], "data": wavs}]}
    v2 = http.post("/v2/models/spoken-digits-cnn/infer", json=v2_body).json()
    v2_labels = next(o for o in v2["outputs"] if o["name"] == "label")["data"]
    tf_style = [{"b64": wav} for wav in wavs]  # TensorFlow Serving's binary values
    heard = http.post("/v1/models/spoken-digits-cnn:predict", json={"instances": tf_style})
    assert [p["label"] for p in heard.json()["predictions"]] == v2_labels


@pytest.mark.ray
@pytest.mark.slow
def test_concurrent_calls_that_list_the_models_all_answer(http):
    """Each of these asks Serve's controller which models run; 48 at once share calls
    instead of racing in Ray's status code (before: a 500 in about one of 300 calls)."""

    def call(i: int) -> int:
        if i % 2:
            return http.get("/v2/health/ready").status_code
        return http.post("/v1/models/nope:predict", json={"instances": [[0.0]]}).status_code

    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(call, range(960)))
    assert sorted(set(statuses)) == [200, 404]
