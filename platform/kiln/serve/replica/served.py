"""Which models this Serve instance serves: what the index lists (REST and gRPC, the model
repository included) and how it answers a request for a model that is not among them."""

import asyncio

from ray import serve

from kiln.serve.config import MODEL_DEPLOYMENT


async def served_models() -> dict[str, bool]:
    """Every model application on this Serve instance and whether it is running."""
    status = await asyncio.to_thread(serve.status)  # a call to the Serve controller
    return {
        name: app.status == "RUNNING"
        for name, app in status.applications.items()
        if MODEL_DEPLOYMENT in app.deployments
    }


def not_served(name: str, served: dict[str, bool]) -> tuple[int, str]:
    """The HTTP status and message for a request to `name`, which is not served ready: 503
    while it deploys (worth a retry), else 404 naming the models that are served."""
    if name in served:
        return 503, f"model {name!r} is not ready yet"
    known = ", ".join(sorted(served)) or "none"
    return 404, f"no model named {name!r} is served here (served: {known})"
