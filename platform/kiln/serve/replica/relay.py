"""KServe V1 predictions the index receives, relayed over HTTP to the model's own application.

`POST /v1/models/NAME:predict` is not under any model's route prefix, so the index gets it; it
passes the body and headers on, unchanged, to `/v2/models/NAME/kserve-v1` on Serve's HTTP
ingress on its own node (HAProxy, or Serve's proxy), where the model's replica answers it as
it answers `/infer`: the same API keys, body limit, rollouts and metrics. A model that is not
served gets the index's own 404 (or 503 while it deploys) the same way. The answer comes back
as the model gave it. Over HTTP rather than a Serve handle: handles carry at most 4 MiB each
way by default (gRPC), where a V1 body or a generator's answer may be larger, and the relay
costs less CPU per call than a handle by reference.
"""

import asyncio
import json
from urllib.parse import quote

import aiohttp
from fastapi import Response

from kiln.serve.replica.rollout import ARM_HEADER
from kiln.serve.replica.served import serve_ingress

# Headers that belong to one hop (the relay sets its own), and encodings the model should not
# apply to an answer that the index passes on as it is.
HOP_BY_HOP = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "accept-encoding",
    "proxy-authorization",
    "proxy-connection",
}
KEPT_IN_ANSWER = {"content-type", "retry-after", "www-authenticate", ARM_HEADER.lower()}


class ModelRelay:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self._opening = asyncio.Lock()

    async def predict_v1(self, name: str, body: bytes, headers: dict[str, str]) -> Response:
        session = await self._open()
        forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        url = f"{self._base}/v2/models/{quote(name, safe='')}/kserve-v1"
        try:
            async with session.post(url, data=body, headers=forwarded) as answer:
                content = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() in KEPT_IN_ANSWER}
                return Response(content, answer.status, headers=kept)
        except aiohttp.ClientError as e:
            error = f"the model {name!r} could not be reached through Serve's ingress: {e}"
            return Response(json.dumps({"error": error}), 502, media_type="application/json")

    async def _open(self) -> aiohttp.ClientSession:
        async with self._opening:  # the first calls at once: one lookup, one session
            if self._session is None:
                ingress = await asyncio.to_thread(serve_ingress)
                self._base = f"http://{ingress.on_this_node(ingress.http_port)}"
                # No overall timeout: the client's own governs, as for a direct call.
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
                )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
