"""What `kiln rollout status` reports: per arm of a model's rollout, its requests, errors and
latency, and the clients' labelled feedback, from the metrics the replicas export since they
started; and whether each arm differs from the control arm.

The test is a two-sided two-proportion z-test (pooled), on the feedback's accuracy where
clients post feedback, on click-through (conversion events per recommendation) where a
recommendation endpoint counts conversions, and on the error rate otherwise. Click-through
counts each recommendation as one trial; when users ask many times each, their requests are
not independent and the test is too eager: compare per user offline before acting on it.

We chose the z-test over a Bayesian posterior because its one number, the p-value, has the
meaning most teams already act on, and because its false-positive rate is the nominal alpha
when the arms are the same (tests/serve check it on simulated A/A experiments). It assumes
one look: peeking until significant inflates that rate, so decide the sample size first.
Each interval is Wilson's (95%), which stays inside [0, 1] and is honest for small counts.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kiln.serve.control.status import quantile

REQUESTS = "ray_kiln_requests_total"
LATENCY = "ray_kiln_request_latency_ms_bucket"
FEEDBACK = "ray_kiln_feedback_total"
CONVERSIONS = "ray_kiln_conversions_total"
Z95 = 1.959963984540054


@dataclass
class Proportion:
    successes: int
    trials: int

    @property
    def rate(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    def interval(self, z: float = Z95) -> tuple[float, float] | None:
        """Wilson's score interval."""
        n = self.trials
        if not n:
            return None
        p = self.successes / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def two_proportions(a: Proportion, b: Proportion) -> tuple[float, float]:
    """b's rate minus a's, and the two-sided p-value of the pooled z-test (1.0 when either
    arm has no trials, or both rates are 0 or 1)."""
    if not a.trials or not b.trials:
        return 0.0, 1.0
    difference = b.successes / b.trials - a.successes / a.trials
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if spread == 0:
        return difference, 1.0
    return difference, math.erfc(abs(difference / spread) / math.sqrt(2))


@dataclass
class Arm:
    name: str
    requests: int = 0
    errors: int = 0
    correct: int = 0
    wrong: int = 0
    conversions: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def accuracy(self) -> Proportion:
        return Proportion(self.correct, self.correct + self.wrong)

    @property
    def click_through(self) -> Proportion:
        """Conversions per answered request (at most one each)."""
        answered = self.requests - self.errors
        return Proportion(min(self.conversions, answered), answered)

    @property
    def error_rate(self) -> Proportion:
        return Proportion(self.errors, self.requests)


@dataclass
class Comparison:
    arm: str
    against: str
    metric: str  # "accuracy" (feedback), "click-through" (conversions) or "error rate"
    difference: float
    p_value: float
    significant: bool


def arms_of(samples: list[Any], model: str) -> dict[str, Arm]:
    """Every arm the model's replicas have answered or been told about, summed over them."""
    arms: dict[str, Arm] = {}
    buckets: dict[str, dict[float, float]] = {}
    for s in samples:
        arm = s.labels.get("arm", "")
        if s.labels.get("model") != model or not arm:
            continue
        entry = arms.setdefault(arm, Arm(arm))
        if s.name == REQUESTS:
            entry.requests += int(s.value)
            entry.errors += int(s.value) if s.labels.get("code") != "200" else 0
        elif s.name == CONVERSIONS:
            entry.conversions += int(s.value)
        elif s.name == FEEDBACK:
            field = "correct" if s.labels.get("outcome") == "correct" else "wrong"
            setattr(entry, field, getattr(entry, field) + int(s.value))
        elif s.name == LATENCY:
            le = float(s.labels["le"])
            buckets.setdefault(arm, {})[le] = buckets.get(arm, {}).get(le, 0.0) + s.value
    for arm, counts in buckets.items():
        ordered = sorted(counts.items())
        arms[arm].p50_ms, arms[arm].p99_ms = quantile(ordered, 0.5), quantile(ordered, 0.99)
    return arms


METRICS: dict[str, Callable[[Arm], Proportion]] = {
    "accuracy": lambda arm: arm.accuracy,
    "click-through": lambda arm: arm.click_through,
    "error rate": lambda arm: arm.error_rate,
}


def _metric(base: Arm, arm: Arm) -> str:
    if base.accuracy.trials and arm.accuracy.trials:
        return "accuracy"
    return "click-through" if base.conversions or arm.conversions else "error rate"


def compare(arms: dict[str, Arm], control: str, alpha: float = 0.05) -> list[Comparison]:
    """Each other arm against `control`: on accuracy where both have feedback, else on
    click-through where either has conversions, else on the error rate (lower is better; the
    difference is still other minus control)."""
    base = arms.get(control)
    if base is None:
        return []
    results = []
    for name, arm in arms.items():
        if name == control:
            continue
        metric = _metric(base, arm)
        difference, p = two_proportions(METRICS[metric](base), METRICS[metric](arm))
        results.append(Comparison(name, control, metric, difference, p, p < alpha))
    return results


def report(arms: dict[str, Arm], comparisons: list[Comparison]) -> dict[str, Any]:
    """JSON for --json: each arm's figures with intervals, then each comparison."""

    def figures(arm: Arm) -> dict[str, Any]:
        return {
            **asdict(arm),
            "accuracy": arm.accuracy.rate,
            "accuracy_95": arm.accuracy.interval(),
            "click_through": arm.click_through.rate,
            "click_through_95": arm.click_through.interval(),
            "error_rate": arm.error_rate.rate,
            "error_rate_95": arm.error_rate.interval(),
        }

    return {
        "arms": [figures(a) for a in arms.values()],
        "comparisons": [asdict(c) for c in comparisons],
    }
