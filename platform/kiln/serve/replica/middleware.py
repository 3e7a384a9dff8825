"""ASGI middleware for the model apps: the request body as the app reads it, and the app's own
root path."""

import zlib

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Content codings a request body may arrive in (RFC 9110 8.4.1): what Triton's HTTP client sends
# with request_compression_algorithm.
CODINGS = ("gzip", "x-gzip", "deflate")


def window_bits(coding: str, start: bytes) -> int:
    """zlib's window bits for a body in `coding`: gzip's header, and for deflate zlib's header
    (RFC 1950, what the name means) or none (raw deflate, what some clients send under it)."""
    if coding != "deflate":
        return 16 + zlib.MAX_WBITS
    zlib_header = len(start) >= 2 and start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


class RequestBody:
    """What an app reads as a request's body: at most `max_bytes`, and decoded when it was
    sent compressed (Content-Encoding: gzip or deflate). 413 past the limit, by Content-Length
    before the body is read, while reading when a client sends none, and on the decoded size
    (a small gzip body can inflate a thousandfold); 415 for a coding it does not know; 400
    for a body that is not what its coding says."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        coding = headers.get("content-encoding", "identity").strip().lower()
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.refuse(413, self.too_large, scope, receive, send)
        elif coding == "identity":
            await self.app(scope, self.limited(receive), send)
        elif coding not in CODINGS:
            known = ", ".join(c for c in CODINGS if not c.startswith("x-"))
            error = f"Content-Encoding {coding!r} is not supported: send {known} or identity"
            await self.refuse(415, error, scope, receive, send)
        else:
            await self.decode(coding, scope, receive, send)

    async def decode(self, coding: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self.decoded(coding, receive)
        except BodyTooLarge:
            await self.refuse(413, self.too_large + " once decoded", scope, receive, send)
            return
        except zlib.error as e:
            error = f"the body is not valid {coding} (its Content-Encoding): {e}"
            await self.refuse(400, error, scope, receive, send)
            return
        dropped = (b"content-encoding", b"content-length")
        plain = [(k, v) for k, v in scope["headers"] if k not in dropped]
        plain.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": plain}, replay(body, receive), send)

    async def decoded(self, coding: str, receive: Receive) -> bytes:
        decoder, parts, size, more = None, [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise zlib.error("the client went away before the body ended")
            chunk, more = message.get("body", b""), message.get("more_body", False)
            if not chunk:
                continue
            decoder = decoder or zlib.decompressobj(window_bits(coding, chunk))
            part = decoder.decompress(chunk, self.max_bytes + 1 - size)  # never 0: unbounded
            size += len(part)
            if size > self.max_bytes or decoder.unconsumed_tail:
                raise BodyTooLarge
            parts.append(part)
        if decoder is not None and not decoder.eof:
            raise zlib.error("the compressed stream ends early")
        return b"".join(parts)

    def limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # the app's exception handlers answer 413
                raise HTTPException(413, self.too_large)
            return message

        return limited_receive

    @staticmethod
    async def refuse(code: int, error: str, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": error}, code)(scope, receive, send)

    @property
    def too_large(self) -> str:
        return f"request body is larger than this endpoint's limit of {self.max_bytes:,} bytes"


class BodyTooLarge(Exception):
    pass


def replay(body: bytes, receive: Receive) -> Receive:
    """The decoded body as one message, then the client's own (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


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
