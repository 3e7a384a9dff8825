"""Request bodies as the model apps read them: bounded, and decoded when sent compressed
(Content-Encoding: gzip or deflate, as Triton's HTTP client sends with
request_compression_algorithm). The middleware alone, in process: pure ASGI logic."""

import asyncio
import gzip
import zlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kiln.serve.replica.middleware import RequestBody

LIMIT = 64 * 1024
BODY = b'{"inputs": [' + b", ".join(b"0.5" for _ in range(1000)) + b"]}"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "body": body.decode(),
            "length": request.headers.get("content-length"),
            "encoding": request.headers.get("content-encoding"),
        }
    )


class Client:
    """POSTs to the echo app behind RequestBody through httpx's ASGI transport."""

    def __init__(self):
        self.app = Starlette(routes=[Route("/", echo, methods=["POST"])])
        self.app.add_middleware(RequestBody, max_bytes=LIMIT)

    def post(self, path: str, **kwargs) -> httpx.Response:
        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kiln") as client:
                return await client.post(path, **kwargs)

        return asyncio.run(post())


@pytest.fixture(scope="module")
def client():
    return Client()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "coding, compress",
    [
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib's format: what the name means, and Triton sends
        ("deflate", raw_deflate),  # what some clients send under the name
    ],
)
def test_the_app_reads_the_decoded_body(client, coding, compress):
    answer = client.post("/", content=compress(BODY), headers={"Content-Encoding": coding})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"body": BODY.decode(), "length": str(len(BODY)), "encoding": None}


def test_a_plain_body_passes_as_sent(client):
    answer = client.post("/", content=BODY, headers={"Content-Encoding": "identity"})
    assert answer.json()["body"] == BODY.decode()


def test_a_body_sent_in_chunks_is_decoded_whole(client):
    packed = gzip.compress(BODY)

    async def chunks():  # no Content-Length: the body arrives in many messages
        for i in range(0, len(packed), 100):
            yield packed[i : i + 100]

    answer = client.post("/", content=chunks(), headers={"Content-Encoding": "gzip"})
    assert answer.json()["body"] == BODY.decode()


def test_a_small_body_that_inflates_past_the_limit_is_413(client):
    bomb = gzip.compress(b"0" * (100 * LIMIT))  # 6.4 MB of zeros in 6 KB
    assert len(bomb) < LIMIT
    answer = client.post("/", content=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert "limit of 65,536 bytes once decoded" in answer.json()["error"]


@pytest.mark.parametrize(
    "content, coding, status, error",
    [
        (BODY, "gzip", 400, "not valid gzip"),
        (gzip.compress(BODY)[:-20], "gzip", 400, "ends early"),
        (b"\x00" * 10, "deflate", 400, "not valid deflate"),
        (BODY, "br", 415, "'br' is not supported: send gzip, deflate or identity"),
        (b"x" * (LIMIT + 1), "identity", 413, "limit of 65,536 bytes"),
        (gzip.compress(b"x" * (LIMIT + 1), 0), "gzip", 413, "limit of 65,536 bytes"),
    ],
    ids=["not-gzip", "truncated", "not-deflate", "unknown-coding", "too-large", "too-large-sent"],
)
def test_bodies_it_cannot_read_say_why(client, content, coding, status, error):
    answer = client.post("/", content=content, headers={"Content-Encoding": coding})
    assert answer.status_code == status
    assert error in answer.json()["error"]
