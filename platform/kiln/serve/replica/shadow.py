"""Shadow traffic (serve.config.Shadow): a copy of an answered request goes to another model
application through a Serve handle; its answer is compared with the primary's and counted in
metrics, never returned.

The copy leaves as a task of the replica's event loop once the primary's outputs exist, so the
primary's answer waits for nothing but the task's creation. The shadow runs in its own
application, on its own replicas and CPUs: a slow, failing or killed shadow costs the primary
a failed count, never an error. At most MAX_PENDING copies are in flight per replica; past
that they are skipped (and counted), so a stalled shadow cannot pile up memory.
"""

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from kiln.serve.config import MODEL_DEPLOYMENT, Shadow
from kiln.serve.replica.metrics import ShadowMetrics
from kiln.serve.replica.protocol import InferenceRequest

log = logging.getLogger("ray.serve")

MAX_PENDING = 256
WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class Comparison:
    examples: int
    agreed: int | None  # rows whose label outputs (not floats) all match; None: none given
    max_delta: float | None  # the largest absolute difference over float outputs (scores)


def compare(primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> Comparison:
    """Row by row over the outputs both give with the same shape."""
    examples = len(next(iter(primary.values()))) if primary else 0
    common = [n for n in primary if n in shadow and shadow[n].shape == primary[n].shape]
    scores = [n for n in common if np.issubdtype(primary[n].dtype, np.floating)]
    labels = [n for n in common if n not in scores]  # class names, ids, flags
    agreed = None
    if labels and examples:
        rows = np.ones(examples, dtype=bool)
        for name in labels:
            rows &= (primary[name] == shadow[name]).reshape(examples, -1).all(axis=1)
        agreed = int(rows.sum())
    deltas = [float(np.abs(primary[n] - shadow[n]).max()) for n in scores if primary[n].size]
    return Comparison(examples, agreed, max(deltas) if deltas else None)


class ShadowCopy:
    def __init__(self, config: Shadow, metrics: ShadowMetrics):
        self.config, self.metrics = config, metrics
        self._handle: Any = None
        self._pending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._random = random.Random()
        self._warned = -WARN_EVERY_S

    def send(self, request: InferenceRequest, primary: dict[str, np.ndarray]) -> None:
        """Copy this answered request to the shadow (a sampled share of them)."""
        if self._random.random() >= self.config.share:
            return
        if len(self._pending) >= MAX_PENDING:
            self.metrics.request("skipped")
            return
        task = asyncio.get_running_loop().create_task(self._compare(request, primary))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _compare(self, request: InferenceRequest, primary: dict[str, np.ndarray]) -> None:
        start = time.perf_counter()
        try:
            answer = self._shadow().shadow_predict.remote(request)
            outputs = await asyncio.wait_for(_awaited(answer), self.config.timeout_s)
        except Exception as e:  # the shadow's failure is never the primary's
            self.metrics.request("failed")
            if time.monotonic() - self._warned > WARN_EVERY_S:  # said, not once per request
                self._warned = time.monotonic()
                log.warning(f"shadow {self.config.application}: {type(e).__name__}: {e}")
            return
        self.metrics.compared(compare(primary, outputs), (time.perf_counter() - start) * 1000)

    def _shadow(self) -> Any:
        if self._handle is None:  # made at first use: the shadow may be deployed after us
            self._handle = serve.get_deployment_handle(
                MODEL_DEPLOYMENT, app_name=self.config.application
            )
        return self._handle


async def _awaited(answer: Any) -> Any:
    return await answer
