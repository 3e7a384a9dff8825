"""Shadow traffic (serve.config.Shadow): a copy of an answered request goes to another model
application through a Serve handle; its answer is compared with the primary's and counted in
metrics, never returned.

The copy leaves as a task of the replica's event loop once the primary's outputs exist, so the
primary's answer waits for nothing but the task's creation. The shadow runs in its own
application, on its own replicas and CPUs: a slow, failing or killed shadow costs the primary
a failed count, never an error. At most MAX_PENDING copies are in flight per replica; past
that they are skipped (and counted), so a stalled shadow cannot pile up memory.

Serve's throughput-optimised mode (as `kiln serve` starts Ray) sends a handle's calls over gRPC,
whose messages stop at 4 MiB (`RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH`): a copy that may not
fit goes by reference, through Ray's object store. Only those: by reference, a copy of every
request cost the primary 10.4-10.9 CPU ms per request at concurrency 1, against 6.5-7.3 over
gRPC (digits-cnn, tests/benchmarks/bench_rollout.py's shadow policy, two rounds).
"""

import asyncio
import logging
import os
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
GRPC_MESSAGE_BYTES = int(os.environ.get("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 4 * 2**20))


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
        self._handles: dict[bool, Any] = {}  # by reference, or as Serve sends by default
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
            by_reference = weight(request) > GRPC_MESSAGE_BYTES // 2  # room for the rest
            answer = self._shadow(by_reference).shadow_predict.remote(request)
            outputs = await asyncio.wait_for(_awaited(answer), self.config.timeout_s)
        except Exception as e:  # the shadow's failure is never the primary's
            self.metrics.request("failed")
            if time.monotonic() - self._warned > WARN_EVERY_S:  # said, not once per request
                self._warned = time.monotonic()
                log.warning(f"shadow {self.config.application}: {type(e).__name__}: {e}")
            return
        self.metrics.compared(compare(primary, outputs), (time.perf_counter() - start) * 1000)

    def _shadow(self, by_reference: bool) -> Any:
        if by_reference not in self._handles:  # made at first use: it may be deployed after us
            handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self.config.application)
            self._handles[by_reference] = (
                handle.options(_by_reference=True) if by_reference else handle
            )
        return self._handles[by_reference]


def weight(request: InferenceRequest) -> int:
    """About what a request weighs pickled: binary tensors their bytes, JSON ones 9 bytes a
    number (a pickled float) and texts their UTF-8 bytes."""
    return sum(
        len(tensor._raw) if tensor._raw is not None else _json_weight(tensor.data)
        for tensor in request.inputs
    )


def _json_weight(data: Any) -> int:
    if isinstance(data, str):
        return len(data.encode()) + 5
    if not isinstance(data, list):
        return 9
    if data and not isinstance(data[0], (list, str)):  # a flat run of numbers: not walked
        return 9 * len(data)
    return 5 + sum(_json_weight(item) for item in data)


async def _awaited(answer: Any) -> Any:
    return await answer
