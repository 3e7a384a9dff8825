"""`kiln rollout status`'s statistics (pure logic): Wilson intervals, the two-proportion
z-test, its false-positive rate on A/A experiments and its power on a real difference, and
arms read from scraped samples."""

import numpy as np
import pytest
from prometheus_client.samples import Sample

from kiln.serve.control.experiment import Arm, Proportion, arms_of, compare, two_proportions
from kiln.serve.replica.rollout import Rollout


def test_wilson_and_the_z_test_match_textbook_values():
    low, high = Proportion(81, 263).interval()  # Wilson's own worked example
    assert (low, high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert Proportion(0, 10).interval()[0] == 0.0 and Proportion(0, 0).interval() is None
    difference, p = two_proportions(Proportion(60, 100), Proportion(75, 100))
    assert difference == pytest.approx(0.15) and p == pytest.approx(0.0237, abs=1e-3)
    assert two_proportions(Proportion(0, 0), Proportion(5, 10)) == (0.0, 1.0)


def test_a_a_experiments_are_significant_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    runs, n = 2000, 1000
    a, b = rng.binomial(n, 0.1, runs), rng.binomial(n, 0.1, runs)
    p_values = [
        two_proportions(Proportion(x, n), Proportion(y, n))[1] for x, y in zip(a, b, strict=True)
    ]
    false_positives = float(np.mean(np.array(p_values) < 0.05))
    print(f"\nA/A false-positive rate at 0.05: {false_positives:.3f} over {runs} experiments")
    assert 0.035 <= false_positives <= 0.065


def test_a_real_lift_is_found():
    rng = np.random.default_rng(1)
    runs, n = 500, 5000
    a, b = rng.binomial(n, 0.10, runs), rng.binomial(n, 0.12, runs)  # B clicks 20% more
    found = [two_proportions(Proportion(x, n), Proportion(y, n)) for x, y in zip(a, b, strict=True)]
    power = float(np.mean([d > 0 and p < 0.05 for d, p in found]))
    print(f"\npower for 0.10 vs 0.12 with {n} per arm: {power:.3f}")
    assert power > 0.85


def test_arms_are_read_from_the_replicas_samples():
    def sample(name, value, **labels):
        return Sample(name, {"model": "m", **labels}, value)

    samples = [
        sample("ray_kiln_requests_total", 90, arm="production", code="200", replica="a"),
        sample("ray_kiln_requests_total", 10, arm="production", code="200", replica="b"),
        sample("ray_kiln_requests_total", 3, arm="candidate", code="500"),
        sample("ray_kiln_requests_total", 27, arm="candidate", code="200"),
        sample("ray_kiln_requests_total", 500, arm="", code="200"),  # no rollout then
        sample("ray_kiln_feedback_total", 70, arm="production", outcome="correct"),
        sample("ray_kiln_feedback_total", 30, arm="production", outcome="wrong"),
        sample("ray_kiln_feedback_total", 29, arm="candidate", outcome="correct"),
        sample("ray_kiln_feedback_total", 1, arm="candidate", outcome="wrong"),
        sample("ray_kiln_request_latency_ms_bucket", 50, arm="candidate", le="5.0"),
        sample("ray_kiln_request_latency_ms_bucket", 100, arm="candidate", le="10.0"),
        sample("ray_kiln_request_latency_ms_bucket", 100, arm="candidate", le="+Inf"),
        Sample("ray_kiln_requests_total", {"model": "other", "arm": "x", "code": "200"}, 5),
    ]
    arms = arms_of(samples, "m")
    assert arms["production"] == Arm("production", requests=100, errors=0, correct=70, wrong=30)
    candidate = arms["candidate"]
    assert (candidate.requests, candidate.errors, candidate.correct) == (30, 3, 29)
    assert candidate.p50_ms == pytest.approx(5.0)
    [result] = compare(arms, "production")
    assert result.metric == "accuracy" and result.difference == pytest.approx(29 / 30 - 0.7)
    assert result.significant
    assert compare(arms, "nope") == []


def simulated_click_through(seed: int, rates: dict[str, float], users: int) -> list[Sample]:
    """One recommender experiment as the replicas count it: each user is assigned an arm by
    the rollout's hash, asks once, and clicks with the arm's true rate."""
    rng = np.random.default_rng(seed)
    rollout = Rollout({arm: 1.0 for arm in rates})
    requests, clicks = dict.fromkeys(rates, 0), dict.fromkeys(rates, 0)
    for user in range(users):
        arm = rollout.arm(f"{seed}-{user}")
        requests[arm] += 1
        clicks[arm] += int(rng.random() < rates[arm])
    return [
        Sample(name, {"model": "recommend", "arm": arm, "code": "200"}, counts[arm])
        for name, counts in (
            ("ray_kiln_requests_total", requests),
            ("ray_kiln_conversions_total", clicks),
        )
        for arm in rates
    ]


def test_click_through_a_a_and_a_b_over_hashed_users():
    """The attribution the recommend endpoint uses (an arm per user by hash), read back as
    scraped samples: A/A experiments over 400 seeds are significant near the nominal 5%, and
    a true lift of 0.08 -> 0.12 with 2,000 users is found in most of them."""

    def verdicts(rates: dict[str, float], seeds: range) -> list[bool]:
        found = []
        for seed in seeds:
            arms = arms_of(simulated_click_through(seed, rates, 2000), "recommend")
            [c] = compare(arms, "a")
            assert c.metric == "click-through"
            found.append(c.significant and (c.difference > 0 or rates["a"] == rates["b"]))
        return found

    false_positives = float(np.mean(verdicts({"a": 0.1, "b": 0.1}, range(400))))
    power = float(np.mean(verdicts({"a": 0.08, "b": 0.12}, range(1000, 1100))))
    print(f"\nclick-through A/A false positives {false_positives:.3f}, A/B power {power:.2f}")
    assert 0.025 <= false_positives <= 0.08
    assert power >= 0.8
