"""A load generator for Open Inference Protocol endpoints (`kiln bench`).

    result = asyncio.run(generate_load(url, body, concurrency=32, duration_s=10))
    result.summary()   # throughput, p50/p95/p99 latency, errors by status
    asyncio.run(generate_grpc_load("127.0.0.1:9000", grpc_request_for(metadata), ...))

Closed loop (`concurrency` clients, each sending when its last answer arrives) or open loop
(`rate` requests per second on a fixed schedule, whatever the answers do: what a soak needs).
Written by hand on aiohttp because the load must come from the same process, payload and
connection reuse for Kiln and for any baseline it is compared with.
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from kiln import plots
from kiln.errors import ServeError
from kiln.serve.replica import binary
from kiln.serve.replica.protocol import DTYPES


@dataclass
class LoadResult:
    duration_s: float
    started: list[float] = field(default_factory=list)  # seconds since the start
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # 0: no answer (connection error)
    retry_after: list[str | None] = field(default_factory=list)  # the header, when answered
    failures: dict[str, int] = field(default_factory=dict)  # why status 0: "ClientOSError: ..."

    def summary(self) -> dict[str, Any]:
        statuses = np.array(self.statuses)
        ok = self.ok_latencies()
        errors: dict[str, int] = {}
        for code in statuses[statuses != 200].tolist():
            errors[str(code)] = errors.get(str(code), 0) + 1
        return {
            "requests": len(self.statuses),
            "ok": int(len(ok)),
            "errors": errors,
            **({"failures": self.failures} if self.failures else {}),
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(len(ok) / self.duration_s, 1) if self.duration_s else 0.0,
            **percentiles(ok, (50, 95, 99), digits=3),
        }

    def ok_latencies(self, sent_from: float = 0.0, sent_to: float = float("inf")) -> np.ndarray:
        """Latencies of the requests answered 200 that were sent in [sent_from, sent_to)."""
        started, statuses = np.array(self.started), np.array(self.statuses)
        answered = (statuses == 200) & (started >= sent_from) & (started < sent_to)
        return np.array(self.latencies_ms)[answered] if self.statuses else np.array([])


def percentiles(latencies_ms: np.ndarray, qs: tuple[int, ...], digits: int) -> dict[str, Any]:
    """{"p50_ms": ..., ...} of the given latencies; None where there are none."""
    return {
        f"p{q}_ms": round(float(np.percentile(latencies_ms, q)), digits)
        if len(latencies_ms)
        else None
        for q in qs
    }


async def generate_load(
    url: str | list[str],
    body: bytes | None,
    *,
    concurrency: int = 1,
    rate: float | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 1.0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """POST `body` to `url`, or GET when body is None; with a list of URLs, request after
    request goes to the next one (e.g. one user per request)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    urls = [url] if isinstance(url, str) else url
    sent_count = 0
    limit = max(concurrency, 1) if rate is None else 0  # open loop: as many as it takes
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> tuple[int, str | None]:
            nonlocal sent_count
            target = urls[sent_count % len(urls)]
            sent_count += 1
            method = "GET" if body is None else "POST"
            try:
                async with session.request(method, target, data=body, headers=headers) as response:
                    await response.read()
                    return response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return 0, f"{type(e).__name__}: {e}"

        return await run_load(call, concurrency, rate, duration_s, warmup_s)


async def generate_grpc_load(
    address: str,
    request: Any,
    *,
    concurrency: int = 1,
    rate: float | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 1.0,
    metadata: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """`ModelInfer(request)` over one HTTP/2 channel to `address` (host:port); statuses are
    recorded as their HTTP equivalents (OK is 200)."""
    import grpc

    from kiln.serve.replica.grpc_service import http_status
    from kiln.serve.replica.protos.open_inference_pb2_grpc import GRPCInferenceServiceStub

    pairs = [(k.lower(), v) for k, v in (metadata or {}).items()]
    async with grpc.aio.insecure_channel(address) as channel:
        infer = GRPCInferenceServiceStub(channel).ModelInfer

        async def call() -> tuple[int, str | None]:
            try:
                await infer(request, metadata=pairs, timeout=timeout_s)
                return 200, None
            except grpc.aio.AioRpcError as e:
                return http_status(e.code()), None

        return await run_load(call, concurrency, rate, duration_s, warmup_s)


async def run_load(
    call: Callable[[], Awaitable[tuple[int, str | None]]],
    concurrency: int,
    rate: float | None,
    duration_s: float,
    warmup_s: float,
) -> LoadResult:
    """`call()` closed loop, or open loop at `rate`, after a warm-up whose calls are not
    recorded. `call()` gives the status and its Retry-After header, or for status 0 (no
    answer) what went wrong."""

    async def send(result: LoadResult | None, start: float) -> None:
        sent = time.perf_counter()
        status, note = await call()
        if result is not None:
            result.started.append(sent - start)
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.statuses.append(status)
            result.retry_after.append(note if status else None)
            if not status:
                result.failures[note or "?"] = result.failures.get(note or "?", 0) + 1

    if warmup_s > 0:
        await _closed_loop(send, None, concurrency, warmup_s)
    result = LoadResult(duration_s)
    if rate is None:
        await _closed_loop(send, result, concurrency, duration_s)
    else:
        await _open_loop(send, result, rate, duration_s)
    return result


async def _closed_loop(send: Any, result: LoadResult | None, clients: int, seconds: float) -> None:
    start = time.perf_counter()

    async def client() -> None:
        while time.perf_counter() - start < seconds:
            await send(result, start)

    await asyncio.gather(*(client() for _ in range(clients)))


async def _open_loop(send: Any, result: LoadResult, rate: float, seconds: float) -> None:
    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(result, start)))
    await asyncio.gather(*tasks)


def body_for(metadata: dict[str, Any], batch: int = 1, seed: int = 0) -> bytes:
    """A JSON request of random values in the model's inputs' datatypes and shapes."""
    inputs = [
        {**tensor, "data": data.ravel().tolist()}
        for tensor, data in random_inputs(metadata, batch, seed)
    ]
    return json.dumps({"inputs": inputs}).encode()


def binary_body_for(
    metadata: dict[str, Any], batch: int = 1, seed: int = 0
) -> tuple[bytes, dict[str, str]]:
    """The same request with the binary tensor extension, asking for binary outputs too (what
    Triton's clients send by default), and the headers it needs."""
    inputs, raws = [], []
    for tensor, data in random_inputs(metadata, batch, seed):
        raws.append(_raw(tensor, data))
        inputs.append({**tensor, "parameters": {"binary_data_size": len(raws[-1])}})
    request = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    header = json.dumps(request).encode()
    headers = {"Content-Type": binary.CONTENT_TYPE, binary.HEADER_LENGTH: str(len(header))}
    return header + b"".join(raws), headers


def grpc_request_for(metadata: dict[str, Any], batch: int = 1, seed: int = 0) -> Any:
    """The same request as a gRPC ModelInferRequest with raw contents (as Triton's sends)."""
    from kiln.serve.replica.protos import open_inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=metadata["name"])
    for tensor, data in random_inputs(metadata, batch, seed):
        request.inputs.add(**tensor)
        request.raw_input_contents.append(_raw(tensor, data))
    return request


def _raw(tensor: dict[str, Any], data: np.ndarray) -> bytes:
    """A tensor's values as the binary extension and gRPC's raw contents carry them."""
    return binary.to_bytes(data.astype(DTYPES[tensor["datatype"]]))


FREE_LENGTH = 8000  # values along a dimension of any size past the batch's (1 s of 8 kHz audio)


def random_inputs(metadata: dict[str, Any], batch: int, seed: int) -> list[tuple[dict, np.ndarray]]:
    """Random values for the model's first input (the others are alternatives to it), or for
    every input of a model that takes them all at once (a table's columns)."""
    rng = np.random.default_rng(seed)
    every = metadata.get("parameters", {}).get("inputs") == "all"
    return [_random(t, batch, rng) for t in metadata["inputs"][: None if every else 1]]


def _random(
    tensor: dict[str, Any], batch: int, rng: np.random.Generator
) -> tuple[dict, np.ndarray]:
    dims = tensor["shape"]
    shape = [
        batch if i == 0 and d == -1 else FREE_LENGTH if d == -1 else d for i, d in enumerate(dims)
    ]
    if tensor["datatype"].startswith("FP"):
        data = rng.random(shape).astype(DTYPES[tensor["datatype"]])
    elif tensor["datatype"] == "BYTES":  # texts: a table's categorical column
        data = np.array([f"v{v}" for v in rng.integers(0, 4, shape).ravel()], dtype=object)
        data = data.reshape(shape)
    else:  # integer ids: small values are valid for every id-taking model
        data = rng.integers(0, 2, shape)
    return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape}, data


def fetch_metadata(model_url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        response = httpx.get(model_url, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise ServeError(f"cannot reach {model_url}: {e}") from None
    if response.status_code != 200:
        raise ServeError(f"{model_url} answered {response.status_code}: {response.text[:200]}")
    return dict(response.json())


def draw_histogram(result: LoadResult, title: str, path: Path) -> None:
    ok = result.ok_latencies()
    fig, ax = plots.subplots(figsize=(7, 4))
    if len(ok):
        bins = np.logspace(np.log10(max(ok.min(), 0.01)), np.log10(ok.max() + 1e-9), 50)
        ax.hist(ok, bins=bins.tolist())
        ax.set_xscale("log")
        for q, style in ((50, "-"), (99, "--")):
            ax.axvline(np.percentile(ok, q), color="k", linestyle=style, label=f"p{q}")
        ax.legend()
    ax.set_xlabel("latency (ms, successful requests)")
    ax.set_ylabel("requests")
    ax.set_title(title)
    fig.tight_layout()
    plots.save(fig, path)
