"""Which arm of a rollout answers a request that names no version (serve.config.Traffic).

A canary draws each request's arm at random. A sticky A/B test hashes the request's key (a
header's value) to a point in [0, 1): the same key lands on the same arm in every replica and
after every restart, as long as the weights stay, with no assignment table to keep.
"""

import bisect
import hashlib
import itertools
import random

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

ARM_HEADER = "kiln-arm"  # the arm that answered, beside the OIP response's parameters.arm


class Rollout:
    def __init__(self, split: dict[str, float], sticky_header: str | None = None):
        self.arms = [arm for arm, weight in split.items() if weight > 0]
        weights = [split[arm] for arm in self.arms]
        total = sum(weights)
        self._bounds = list(itertools.accumulate(w / total for w in weights))
        self.sticky_header = sticky_header
        self._random = random.Random()

    def arm(self, key: str | None = None) -> str:
        """The arm for a request with this key (None: drawn at random)."""
        point = self._random.random() if key is None else unit_hash(key)
        return self.arms[min(bisect.bisect_right(self._bounds, point), len(self.arms) - 1)]


class Feedback(BaseModel):
    """POST /v2/models/{name}/feedback: how many of an arm's answers the client found correct
    (a label it learned later); `kiln rollout status` compares the arms on it."""

    model_config = ConfigDict(extra="forbid")

    arm: str = Field(description="parameters.arm of the answers (the kiln-arm header)")
    correct: NonNegativeInt = 0
    wrong: NonNegativeInt = 0


def unit_hash(key: str) -> float:
    """A point in [0, 1), uniform over keys and the same in every process (unlike hash())."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
