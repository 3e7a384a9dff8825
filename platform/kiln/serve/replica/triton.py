"""Triton's own REST extensions that its tools read before they send a request: the model
configuration (GET .../config) and inference statistics (GET .../stats). Triton's
perf_analyzer, with its defaults, reads both (the configuration for the batch dimension and
the optional inputs, the statistics before and after each measurement window), and its client
examples read the configuration; KServe's protocol has neither. Also the model repository's
index, and its load and unload as a server whose models are deployed rather than loaded
(the routes: kiln.serve.replica.api.index_api).

Statistics are the answering replica's own, kept per version since it started: Triton runs a
model in one process, Kiln in one process per replica, so with several replicas two calls may
count different replicas (clients that compare two calls should run against one replica)."""

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, StrictBool

from kiln.serve.replica.protocol import DTYPES, ModelMetadata, TensorMetadata
from kiln.serve.replica.served import not_served

EXTENSIONS = ["model_configuration", "statistics", "model_repository"]
BYTES_PREFIX = 4  # each BYTES element in binary: its length (4 bytes), then its bytes


def model_config(meta: ModelMetadata, required: list[str], max_body_bytes: int) -> dict[str, Any]:
    """Triton's configuration of a model, as its REST API gives it. Every Kiln input and
    output has a batch dimension first, so `max_batch_size` is positive: the largest batch
    whose request can fit in the endpoint's body limit (inputs not in `required` are
    optional: alternatives of one another, or extras), and dims are the shape after it."""

    def tensor(t: TensorMetadata, optional: bool | None = None) -> dict[str, Any]:
        kind = "STRING" if t.datatype == "BYTES" else t.datatype
        out = {"name": t.name, "data_type": f"TYPE_{kind}", "dims": t.shape[1:] or [1]}
        return out if optional is None else {**out, "optional": optional}

    return {
        "name": meta.name,
        "platform": meta.platform,
        "backend": "kiln",
        "version_policy": {"specific": {"versions": [int(v) for v in meta.versions]}},
        "max_batch_size": max(
            max_batch_size(sent, max_body_bytes) for sent in _requests(meta.inputs, required)
        ),
        "input": [tensor(i, i.name not in required) for i in meta.inputs],
        "output": [tensor(o) for o in meta.outputs],
    }


def _requests(inputs: list[TensorMetadata], required: list[str]) -> list[list[TensorMetadata]]:
    """The inputs a request may carry: the required ones, or else one of the alternatives."""
    must = [t for t in inputs if t.name in required]
    return [must] if must else [[t] for t in inputs]


def max_batch_size(inputs: list[TensorMetadata], max_body_bytes: int) -> int:
    """How many examples of the smallest possible size fit in one body (a dimension of any
    size counts as 1; a BYTES element as its 4-byte length alone)."""
    example = 0
    for t in inputs:
        elements = math.prod(max(d, 1) for d in t.shape[1:])
        kind = DTYPES[t.datatype]
        example += elements * (BYTES_PREFIX if t.datatype == "BYTES" else kind(0).itemsize)
    return max(1, max_body_bytes // max(example, 1))


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class VersionStatistics:
    """Triton's statistics of one model version. Per answered request: success or fail
    (time in this replica), and for those that ran: queue (waiting for a batch), compute
    input (decoding and preparing the tensors), infer (the model call of its batch) and
    output (picking and encoding the outputs). Per model call: executions, inferences (rows)
    and its time by batch size."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)

    def to_json(self, name: str, version: int) -> dict[str, Any]:
        timed = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        stats = {k: vars(getattr(self, k)) for k in timed}
        none = {"count": 0, "ns": 0}  # Kiln keeps no response cache
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {**stats, "cache_hit": none, "cache_miss": none},
            "batch_stats": [
                {"batch_size": size, "compute_infer": vars(d)}
                for size, d in sorted(self.batches.items())
            ],
        }


class Statistics:
    """Every version's statistics in this replica. Every caller today runs on the replica's
    event loop (requests, Serve's batch task, the async routes that read them); the lock keeps
    a record whole should a sync route (run in a thread pool) read or count one."""

    def __init__(self) -> None:
        self._versions: dict[int, VersionStatistics] = {}
        self._lock = threading.Lock()

    def executed(self, version: int, rows: int, ns: int) -> None:
        with self._lock:
            stats = self._of(version)
            stats.execution_count += 1
            stats.inference_count += rows
            stats.batches.setdefault(rows, Duration()).add(ns)
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def computed(self, version: int, input_ns: int, queue_ns: int, infer_ns: int, output_ns: int):
        """One request's way through the model: all four counts move together."""
        with self._lock:
            stats = self._of(version)
            stats.compute_input.add(input_ns)
            stats.queue.add(queue_ns)
            stats.compute_infer.add(infer_ns)
            stats.compute_output.add(output_ns)

    def output_encoded(self, version: int, ns: int) -> None:
        """The REST body's encoding, added to the output time of a request already counted."""
        with self._lock:
            self._of(version).compute_output.add(ns, count=0)

    def answered(self, version: int | None, ok: bool, ns: int) -> None:
        if version is None:
            return
        with self._lock:
            stats = self._of(version)
            (stats.success if ok else stats.fail).add(ns)

    def to_json(self, name: str, versions: list[int]) -> dict[str, Any]:
        with self._lock:
            return {"model_stats": [self._of(v).to_json(name, v) for v in sorted(versions)]}

    def _of(self, version: int) -> VersionStatistics:
        return self._versions.setdefault(version, VersionStatistics())


class RepositoryIndexRequest(BaseModel):
    """POST /v2/repository/index: Triton's client sends no body at all."""

    ready: StrictBool = False  # only the models ready to answer


def repository_index(served: dict[str, bool], ready_only: bool) -> list[dict[str, str]]:
    """Each served model and its state, as Triton lists its repository (the version is
    optional there: a Kiln model follows an alias, and its version is in its own metadata)."""
    return [
        {"name": name, "state": "READY" if ready else "UNAVAILABLE", "reason": ""}
        for name, ready in sorted(served.items())
        if ready or not ready_only
    ]


def load_refused(name: str, served: dict[str, bool]) -> tuple[int, str] | None:
    """A model is loaded by deploying it, as under Triton's default model control: a served,
    ready one loads (None: scripts written for Triton's explicit mode load first); any other
    is answered as a request to a model that is not served (HTTP status, message)."""
    return None if served.get(name) else not_served(name, served)


def unload_refused(name: str, served: dict[str, bool]) -> tuple[int, str]:
    """Why `name` is not unloaded through the protocol (HTTP status, message): a served
    model is unloaded by deleting its application, which the message says how to do."""
    if name not in served:
        return not_served(name, served)
    return 403, (
        f"Kiln unloads {name!r} when its application is deleted: kiln serve shutdown --only {name}"
    )
