"""Which models this Serve instance serves: what the index lists (REST and gRPC, the model
repository included) and how it answers a request for a model that is not among them; and
where Serve's ingress listens, for the index's relays. Both are read from Serve's controller."""

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from kiln.errors import ServeError
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


@dataclass(frozen=True)
class Ingress:
    """Where Serve's ingress listens on each node."""

    host: str  # what its HTTP side binds; "0.0.0.0" (or "::", ""): every interface
    http_port: int
    grpc_port: int | None  # None: no gRPC servicers

    @property
    def every_interface(self) -> bool:
        return self.host in ("0.0.0.0", "::", "")

    def on_this_node(self, port: int) -> str:
        """HOST:PORT of the ingress on this node."""
        host = ray.util.get_node_ip_address() if self.every_interface else self.host
        return f"{host}:{port}"


def serve_ingress() -> Ingress:
    """From Serve's controller (the call `serve.status()` makes); in a Serve replica."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    client = _get_global_client()
    if client is None:
        raise ServeError("the index's relays run in a Serve replica: no Serve controller here")
    with _one_at_a_time:
        details = ServeInstanceDetails(**client.get_serve_details())
    grpc, http = details.grpc_options, details.http_options
    return Ingress(
        host=(http.host if http else None) or "",
        http_port=http.port if http else 8000,
        grpc_port=grpc.port if grpc and grpc.grpc_servicer_functions else None,
    )


def not_served(name: str, served: dict[str, bool]) -> tuple[int, str]:
    """The HTTP status and message for a request to `name`, which is not served ready: 503
    while it deploys (worth a retry), else 404 naming the models that are served."""
    if name in served:
        return 503, f"model {name!r} is not ready yet"
    known = ", ".join(sorted(served)) or "none"
    return 404, f"no model named {name!r} is served here (served: {known})"
