"""Which models this Serve instance serves: what the index lists (REST and gRPC, the model
repository included) and how it answers a request for a model that is not among them."""

import asyncio
import json
import threading
import time
from typing import Any

from ray import serve

from kiln.serve.config import MODEL_DEPLOYMENT


async def served_models() -> dict[str, bool]:
    """Every model application on this Serve instance and whether it is running. Callers
    at the same time share one call to the Serve controller: `serve.status()` is not safe
    in two threads at once (Ray 2.60 registers and unregisters a module with cloudpickle
    as it reads the answer; the second call raised ValueError, a 500 under load)."""
    loop = asyncio.get_running_loop()
    call = _in_flight.get(loop)
    if call is None:
        call = _in_flight[loop] = asyncio.ensure_future(asyncio.to_thread(_status))
        call.add_done_callback(lambda _: _in_flight.pop(loop, None))
    status = await asyncio.shield(call)
    return {
        name: app.status == "RUNNING"
        for name, app in status.applications.items()
        if MODEL_DEPLOYMENT in app.deployments
    }


_in_flight: dict[asyncio.AbstractEventLoop, asyncio.Future] = {}
_one_at_a_time = threading.Lock()  # across event loops too


def _status() -> Any:
    with _one_at_a_time:
        return serve.status()


def not_served(name: str, served: dict[str, bool]) -> tuple[int, str]:
    """The HTTP status and message for a request to `name`, which is not served ready: 503
    while it deploys (worth a retry), else 404 naming the models that are served."""
    if name in served:
        return 503, f"model {name!r} is not ready yet"
    known = ", ".join(sorted(served)) or "none"
    return 404, f"no model named {name!r} is served here (served: {known})"


class ModelRelay:
    """Has a served model's replica answer a request the index received: through a Serve
    handle per model, with the list of models read at most every `ttl_s`, not per request."""

    def __init__(self, ttl_s: float = 2.0):
        self.ttl_s = ttl_s
        self.checked = -ttl_s
        self.served: dict[str, bool] = {}
        self.handles: dict[str, Any] = {}

    async def predict_v1(
        self, name: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """A KServe V1 prediction (kiln.serve.replica.api.predict_v1): the HTTP status and
        the JSON body."""
        if time.monotonic() - self.checked > self.ttl_s or not self.served.get(name):
            self.served, self.checked = await served_models(), time.monotonic()
        if not self.served.get(name):
            status, error = not_served(name, self.served)
            return status, json.dumps({"error": error}).encode()
        if name not in self.handles:
            # By reference (Ray's object store): Serve's default transport between replicas,
            # gRPC, refuses a message over 4 MiB either way, and bodies here reach the
            # index's max_body_bytes (64 MiB), answers as much (a generator's images). It
            # costs about 3 ms a call more on 2 cores: V1 is the compatibility path, the Open
            # Inference Protocol the fast one.
            handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=name)
            self.handles[name] = handle.options(_by_reference=True)
        answer: tuple[int, bytes] = await self.handles[name].predict_v1.remote(body, headers)
        return answer
