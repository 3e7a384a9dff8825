"""`kiln bench MODEL_URL`: load an endpoint and report throughput, latency and errors.

kiln bench http://127.0.0.1:8000/v2/models/digits-cnn --concurrency 32 --duration 10
kiln bench URL --rate 200 --duration 60 --histogram latency.png --output bench.json
kiln bench URL --grpc 127.0.0.1:9000 --concurrency 32      # ModelInfer over gRPC
"""

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kiln.cli.output import console, print_json
from kiln.errors import ServeError


def bench(
    model_url: str = typer.Argument(..., help="e.g. http://127.0.0.1:8000/v2/models/digits-cnn"),
    concurrency: int = typer.Option(8, "-c", "--concurrency", min=1, help="closed-loop clients"),
    rate: float | None = typer.Option(None, "--rate", min=0.1, help="open loop: requests/s"),
    duration: float = typer.Option(10.0, "-d", "--duration", min=0.1, help="seconds measured"),
    warmup: float = typer.Option(1.0, "--warmup", min=0, help="seconds sent first, not counted"),
    payload: Path | None = typer.Option(None, "--payload", help="a JSON request body file"),
    batch: int = typer.Option(1, "--batch", min=1, help="examples per generated request"),
    binary_tensors: bool = typer.Option(
        False, "--binary", help="generated requests use the binary tensor extension (Triton's)"
    ),
    grpc_address: str | None = typer.Option(
        None,
        "--grpc",
        help="send ModelInfer over gRPC to HOST:PORT instead (the model's application named in "
        "the metadata); the model's metadata is still read from MODEL_URL",
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="write figures as JSON"),
    histogram: Path | None = typer.Option(None, "--histogram", help="latency histogram PNG"),
    soak: Path | None = typer.Option(
        None, "--soak", help="soak mode (with --rate): latency per interval and replica memory PNG"
    ),
    interval: float = typer.Option(60.0, "--interval", min=1, help="soak: seconds per row"),
    address: str | None = typer.Option(
        None,
        help="soak: the dashboard whose replicas' memory is sampled (default as kiln serve)",
    ),
    json_output: bool = typer.Option(False, "--json", help="JSON on stdout"),
) -> None:
    """Send requests for a while; print throughput, p50/p95/p99 and errors. With --soak, a
    fixed rate for a long time: p50/p99 and errors per interval, and each replica's memory."""
    from kiln.bench.load import draw_histogram
    from kiln.bench.soak import ReplicaSampler, draw_soak, soak_report
    from kiln.cluster.address import LOCAL_DASHBOARD, resolve_address

    model_url = model_url.rstrip("/")
    key = os.environ.get("KILN_API_KEY")  # a client's key, not the server's list
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if soak is not None and rate is None:
        raise ServeError("--soak sends a fixed rate: give --rate")
    if grpc_address and (payload or binary_tensors):
        raise ServeError("--grpc sends generated raw tensors: leave out --payload and --binary")
    load_of = {"concurrency": concurrency, "rate": rate, "duration_s": duration, "warmup_s": warmup}
    if grpc_address:
        sending = _grpc_load(model_url, grpc_address, batch, headers, load_of)
    else:
        body, headers = _request_body(model_url, payload, batch, binary_tensors, headers)
        sending = _http_load(f"{model_url}/infer", body, headers, load_of)
    sampler = None
    if soak is not None:
        sampler = ReplicaSampler(resolve_address(address, fallback=LOCAL_DASHBOARD)).start()
    result = asyncio.run(sending)
    load = f"{rate:g} req/s" if rate else f"concurrency {concurrency}"
    summary = {"url": model_url, "load": load, **result.summary()}
    if sampler is not None and soak is not None:
        report = soak_report(result, sampler.stop(), interval)
        draw_soak(report, f"{model_url.rsplit('/', 1)[-1]}, {load}", soak)
        summary = {**summary, **{k: report[k] for k in ("intervals", "replicas")}}
    if output:
        output.write_text(json.dumps(summary, indent=2))
    if histogram:
        draw_histogram(result, f"{model_url.rsplit('/', 1)[-1]}, {load}", histogram)
    if json_output:
        print_json(summary)
        return
    _print_summary(summary, f"{model_url}, {load}, {duration:g} s")
    if "intervals" in summary:
        _print_soak(summary, soak)


def _http_load(url: str, body: bytes, headers: dict, load_of: dict) -> Any:
    from kiln.bench.load import generate_load

    return generate_load(url, body, headers=headers, **load_of)


def _grpc_load(model_url: str, address: str, batch: int, headers: dict, load_of: dict) -> Any:
    """ModelInfer calls with the model's application (the last part of MODEL_URL, as Kiln's
    configs name applications after their models) and the API key as metadata."""
    from kiln.bench.load import fetch_metadata, generate_grpc_load, grpc_request_for

    request = grpc_request_for(fetch_metadata(model_url, headers), batch)
    metadata = {"application": model_url.rsplit("/", 1)[-1], **headers}
    return generate_grpc_load(address, request, metadata=metadata, **load_of)


def _request_body(
    model_url: str, payload: Path | None, batch: int, binary: bool, headers: dict
) -> tuple[bytes, dict]:
    """The payload file, else a request of random values in the model's first input (as JSON,
    or with the binary tensor extension); and the headers to send it with."""
    from kiln.bench.load import binary_body_for, body_for, fetch_metadata

    if payload is None and binary:
        body, extra = binary_body_for(fetch_metadata(model_url, headers), batch)
        return body, {**headers, **extra}
    if payload is None:
        return body_for(fetch_metadata(model_url, headers), batch), headers
    try:
        return payload.read_bytes(), headers
    except OSError as e:
        raise ServeError(f"cannot read payload {payload}: {e.strerror}") from None


def _print_summary(summary: dict, title: str) -> None:
    table = Table("requests", "ok", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", title=title)
    table.add_row(
        *(str(summary[k]) for k in ("requests", "ok", "throughput_rps", "p50_ms", "p95_ms")),
        str(summary["p99_ms"]),
        ", ".join(f"{c}: {n}" for c, n in summary["errors"].items()) or "none",
    )
    console.print(table)


def _print_soak(summary: dict, png: Path | None) -> None:
    rows = Table("from s", "requests", "errors", "p50 ms", "p99 ms", title="per interval")
    for i in summary["intervals"]:
        rows.add_row(*(str(i[k]) for k in ("from_s", "requests", "errors", "p50_ms", "p99_ms")))
    console.print(rows)
    for name, r in summary["replicas"].items():
        console.print(
            f"{name}: {r['start_mb']} -> {r['end_mb']} MB ({r['growth_mb_per_hour']:+} MB/hour)"
        )
    console.print(f"latency and memory over time: {png}")
