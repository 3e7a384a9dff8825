"""ASGI middleware for the model apps: request body limits, and the app's own root path."""

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """413 for bodies over `max_bytes`: by Content-Length before the body is read, and while
    reading when a client sends none."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            await JSONResponse({"error": self.message}, 413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # the app's exception handlers answer 413
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def message(self) -> str:
        return f"request body is larger than this endpoint's limit of {self.max_bytes:,} bytes"


class RootPathAsSlash:
    """Serve mounts an app at its route prefix; a request for the prefix itself
    (GET /v2/models/digits-cnn, the protocol's metadata call) is routed to the app's "/"
    instead of being redirected to a trailing slash."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == scope.get("root_path", "") != "":
            scope = {**scope, "path": scope["path"] + "/"}
        await self.app(scope, receive, send)
