"""Sampled access logs: one structured line per answer (every error, `share` of the others)
carrying the request's id, so that one request can be followed from the client to the replica.

Ray Serve gives each HTTP request an id: the client's `X-Request-Id` header, else one it makes
(HAProxy's ingress sets the header), returned in the response's `X-Request-Id`. Serve's logger
adds it, with the application, deployment and replica, to every line a replica logs while it
answers. Under `logging_config: {encoding: JSON}` (Kiln's serving files) each line of the
replica's log is one JSON object, and the fields below are keys of it:

    {"message": "digits-cnn v3 200 2.1 ms", "request_id": "r-42", "model": "digits-cnn",
     "version": 3, "arm": "candidate", "status": 200, "latency_ms": 2.1, "replica": ...}

Under RAY_SERVE_THROUGHPUT_OPTIMIZED (as `kiln serve` starts Ray) Serve buffers a replica's log
lines until 1,000 have gathered: at a 1% sample, a line could wait for 100,000 requests. The
endpoint's watcher calls `flush()` on every tick, so lines reach the file within seconds while
writes stay batched.
"""

import logging
import logging.handlers
import random

log = logging.getLogger("ray.serve")


class AccessLog:
    def __init__(self, model: str, share: float = 0.01):
        self.model, self.share = model, share
        self._random = random.Random()

    def answered(
        self, version: int | None, status: int, latency_ms: float, arm: str | None
    ) -> None:
        if status < 400 and self._random.random() >= self.share:
            return
        fields = {
            "model": self.model,
            "version": version,
            "arm": arm,
            "status": status,
            "latency_ms": round(latency_ms, 3),
        }
        level = logging.WARNING if status >= 500 else logging.INFO
        served = f"{self.model} v{version}" + (f" ({arm})" if arm else "")
        log.log(level, f"{served} {status} {latency_ms:.1f} ms", extra=fields)


def flush() -> None:
    """Write out what Serve's log handlers have buffered."""
    for handler in log.handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.flush()
