"""A rollout's arm choice and a shadow's comparison (pure logic): shares follow the weights,
a sticky key keeps its arm, a shadow's rows agree or not, a copy's weight bounds its pickled
size."""

import json

import numpy as np
import pytest
from pydantic import ValidationError
from ray import cloudpickle
from scipy import stats

from kiln.serve.config import ModelUserConfig, RecommendUserConfig, Traffic
from kiln.serve.replica.protocol import InferenceRequest, RequestInput
from kiln.serve.replica.rollout import Rollout, unit_hash
from kiln.serve.replica.shadow import Comparison, compare, weight


def test_random_draws_follow_the_weights():
    rollout = Rollout({"production": 80, "candidate": 20, "retired": 0})
    draws = [rollout.arm() for _ in range(10_000)]
    low, high = stats.binom.interval(0.999, 10_000, 0.2)
    assert low <= draws.count("candidate") <= high
    assert "retired" not in draws and rollout.arms == ["production", "candidate"]


def test_a_sticky_key_keeps_its_arm_and_keys_split_by_weight():
    rollout = Rollout({"a": 1, "b": 3}, sticky_header="x-user-id")
    users = [f"user-{i}" for i in range(4_000)]
    first = [rollout.arm(u) for u in users]
    assert first == [rollout.arm(u) for u in users]  # and in every process: no salted hash()
    low, high = stats.binom.interval(0.999, 4_000, 0.25)
    assert low <= first.count("a") <= high
    assert unit_hash("user-1") == unit_hash("user-1") and 0 <= unit_hash("") < 1


def test_a_traffic_config_reads_version_numbers_and_refuses_no_weight():
    config = ModelUserConfig.model_validate({"traffic": {"split": {2: 90, "candidate": 10}}})
    assert config.traffic is not None and list(config.traffic.split or ()) == ["2", "candidate"]
    with pytest.raises(ValidationError, match="every weight is 0"):
        Traffic(split={"production": 0})
    with pytest.raises(ValidationError, match="at least 1 item"):
        Traffic(split={})


def test_a_recommendation_rollout_takes_a_split_only():
    config = RecommendUserConfig.model_validate({"traffic": {"split": {"a": 1, "b": 1}}})
    assert config.traffic is not None and config.traffic.split == {"a": 1, "b": 1}
    for traffic in (
        {"split": {"a": 1}, "sticky_header": "x-user-id"},  # the key is always the user id
        {"shadow": {"application": "other"}},
    ):
        with pytest.raises(ValidationError, match="takes a split only"):
            RecommendUserConfig.model_validate({"traffic": traffic})


def test_a_shadow_is_compared_row_by_row_on_labels_and_scores():
    primary = {
        "label": np.array(["1", "2", "3", "4"], dtype=object),  # class names, as served
        "probabilities": np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]),
    }
    shadow = {
        "label": np.array(["1", "2", "0", "4"], dtype=object),
        "probabilities": np.array([[0.8, 0.2], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]]),
    }
    assert compare(primary, shadow) == Comparison(4, 3, pytest.approx(0.1))
    assert compare(primary, primary) == Comparison(4, 4, 0.0)
    # a shadow giving other outputs, or other shapes, is compared on nothing
    assert compare(primary, {"label": np.array(["1", "2"])}) == Comparison(4, None, None)
    ids = compare({"item": np.array([[3, 4], [5, 6]])}, {"item": np.array([[3, 4], [6, 5]])})
    assert ids == Comparison(2, 1, None)
    assert compare({"image": np.zeros((2, 8))}, {"image": np.ones((2, 8))}) == Comparison(
        2, None, 1.0
    )


@pytest.mark.parametrize(
    "data, raw",
    [
        (np.linspace(0, 1, 100_000).tolist(), None),  # flat JSON numbers
        ([[[1.25] * 8] * 8] * 1000, None),  # nested rows of an image batch
        (["\u00e9t\u00e9 " * 50] * 2000, None),  # texts, not ASCII
        (None, memoryview(np.ones(250_000, dtype=np.float32).tobytes())),  # binary
    ],
)
def test_a_shadow_copy_weighs_at_least_half_what_it_pickles_to(data, raw):
    """A copy under half the gRPC message limit by `weight` must fit the message: its weight
    is never under half its pickled size (cloudpickle, as Serve sends it)."""
    data = json.loads(json.dumps(data))  # distinct objects, as a parsed body holds them
    tensor = RequestInput(name="input", shape=[-1], datatype="FP32", data=data)
    tensor._raw = raw
    request = InferenceRequest(inputs=[tensor])
    pickled = len(cloudpickle.dumps(request))
    assert pickled / 2 <= weight(request) <= pickled * 1.5
