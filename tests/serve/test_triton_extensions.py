"""Triton's model configuration, statistics and repository, as Kiln computes and answers
them in process (no Ray; the served routes are tried with Triton's own client in
test_triton.py)."""

from kiln.serve.replica.protocol import ModelMetadata, TensorMetadata
from kiln.serve.replica.triton import (
    Statistics,
    max_batch_size,
    model_config,
    repository_index,
)

CNN = ModelMetadata(
    name="digits-cnn",
    versions=["1", "2"],
    platform="pytorch_2.13.0",
    inputs=[TensorMetadata(name="input", datatype="FP32", shape=[-1, 1, 8, 8])],
    outputs=[
        TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, 10]),
        TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
    ],
)


def test_a_configuration_has_the_batch_dimension_apart_and_the_types_triton_names():
    config = model_config(CNN, ["input"], max_body_bytes=4 * 2**20)
    assert config["max_batch_size"] == 4 * 2**20 // (64 * 4)  # examples of 64 FP32 values
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8], "optional": False}
    ]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
        {"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
    ]
    assert config["version_policy"] == {"specific": {"versions": [1, 2]}}


def test_alternative_inputs_are_optional_and_the_batch_bound_holds_for_any_of_them():
    seed = TensorMetadata(name="seed", datatype="INT64", shape=[-1])
    latent = TensorMetadata(name="latent", datatype="FP32", shape=[-1, 32])
    gan = CNN.model_copy(update={"inputs": [seed, latent]})
    config = model_config(gan, [], max_body_bytes=8000)
    assert [i["optional"] for i in config["input"]] == [True, True]
    assert config["max_batch_size"] == 1000  # of the smallest example: one INT64 seed


def test_the_batch_bound_counts_what_the_smallest_example_takes():
    text = TensorMetadata(name="text", datatype="BYTES", shape=[-1])
    assert max_batch_size([text], 4000) == 1000  # each string's 4-byte length, at least
    audio = TensorMetadata(name="pcm", datatype="INT16", shape=[-1, -1])
    assert max_batch_size([audio], 4000) == 2000  # a dimension of any size: 1 or more
    huge = TensorMetadata(name="x", datatype="FP64", shape=[-1, 1000, 1000])
    assert max_batch_size([huge], 4000) == 1  # one never fits: the body limit says so


def test_statistics_move_the_three_compute_counts_together():
    stats = Statistics()
    stats.executed(1, rows=6, ns=900)
    for _ in range(2):  # two requests of 3 rows that rode in that one model call
        stats.computed(1, input_ns=10, queue_ns=20, infer_ns=900, output_ns=5)
        stats.output_encoded(1, 7)
        stats.answered(1, ok=True, ns=2000)
    stats.answered(1, ok=False, ns=300)
    (one,) = stats.to_json("digits-cnn", [1])["model_stats"]
    assert (one["name"], one["version"]) == ("digits-cnn", "1")
    assert (one["inference_count"], one["execution_count"]) == (6, 1)
    timed = one["inference_stats"]
    assert timed["success"] == {"count": 2, "ns": 4000} and timed["fail"] == {"count": 1, "ns": 300}
    assert timed["compute_infer"] == {"count": 2, "ns": 1800}
    assert timed["compute_output"] == {"count": 2, "ns": 24}
    assert timed["compute_input"]["count"] == timed["queue"]["count"] == 2
    assert timed["cache_hit"] == timed["cache_miss"] == {"count": 0, "ns": 0}
    assert one["batch_stats"] == [{"batch_size": 6, "compute_infer": {"count": 1, "ns": 900}}]
    assert one["last_inference"] > 0


def test_a_version_that_answered_nothing_yet_has_zero_statistics():
    (two,) = Statistics().to_json("digits-cnn", [2])["model_stats"]
    assert two["version"] == "2" and two["inference_count"] == 0
    assert two["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_the_repository_index_lists_each_served_model_and_only_ready_ones_when_asked():
    served = {"b": True, "a": False}
    assert [m["name"] for m in repository_index(served, ready_only=False)] == ["a", "b"]
    assert repository_index(served, ready_only=True) == [
        {"name": "b", "state": "READY", "reason": ""}
    ]


def test_loading_a_served_model_succeeds_and_any_other_says_why_not():
    from fastapi.testclient import TestClient

    from kiln.serve.replica.api import index_api

    async def served() -> dict[str, bool]:
        return {"ready": True, "deploying": False}

    async def relay(name: str, body: bytes, headers: dict[str, str]):
        raise AssertionError("no KServe V1 call here")

    client = TestClient(index_api(served, relay, max_body_bytes=2**20))

    def post(name: str, action: str):
        return client.post(f"/v2/repository/models/{name}/{action}")

    assert post("ready", "load").status_code == 200 and post("ready", "load").json() == {}
    assert post("deploying", "load").status_code == 503
    nope = post("nope", "load")
    assert nope.status_code == 404 and "served: deploying, ready" in nope.json()["error"]
    assert post("ready", "unload").status_code == 403
    assert post("nope", "unload").status_code == 404


def test_a_model_not_served_is_retried_while_it_deploys_and_named_among_the_others_if_unknown():
    from kiln.serve.replica.served import not_served

    served = {"digits-cnn": True, "digits-mlp": False}
    assert not_served("digits-mlp", served) == (503, "model 'digits-mlp' is not ready yet")
    status, message = not_served("nope", served)
    assert status == 404 and message.endswith("(served: digits-cnn, digits-mlp)")
    assert not_served("nope", {})[1].endswith("(served: none)")
