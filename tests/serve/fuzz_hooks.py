"""schemathesis hooks for Kiln's documents (SCHEMATHESIS_HOOKS=tests.serve.fuzz_hooks): the
rules of the Open Inference Protocol, and Kiln's, that no JSON Schema can state, applied to the
requests schemathesis generates as valid, so that "valid" means what the protocol means.

- A tensor's data count is the product of its shape: `data` is repeated or cut to fit.
- An optional input sent beside the main one (a conditional generator's `labels`) has one
  value per example of the main input: its shape is set to that batch.
- A binary body (application/octet-stream) is a JSON header of Inference-Header-Content-Length
  bytes, then the tensors' raw bytes: the body is built from the model's inputs
  (KILN_FUZZ_INPUTS, its metadata's `inputs` as JSON) and the header set.

Requests generated as invalid are left alone: the server must refuse them.
"""

import json
import math
import os
import zlib

import numpy as np
import schemathesis
from schemathesis import GenerationMode

from kiln.serve.replica import binary
from kiln.serve.replica.protocol import DTYPES

MAX_VALUES = 4096  # per generated tensor: the fuzzer tests rules, not throughput
OPTIONAL = {"labels"}  # inputs that only come beside another (kiln.serve.replica.predictor)


@schemathesis.hook
def map_case(context, case):
    meta = case._meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if case.media_type == binary.CONTENT_TYPE:
        inputs = json.loads(os.environ.get("KILN_FUZZ_INPUTS") or "[]")
        if inputs:
            case.body, length = binary_body(inputs, seed=zlib.crc32(bytes(case.body or b"")))
            case.headers = {**(case.headers or {}), binary.HEADER_LENGTH: str(length)}
    elif isinstance(case.body, dict):
        tensors = [t for t in case.body.get("inputs") or [] if isinstance(t, dict)]
        for tensor in tensors:
            fit_data_to_shape(tensor)
        main = [t for t in tensors if t.get("name") not in OPTIONAL and t.get("shape")]
        for tensor in tensors:
            if tensor.get("name") in OPTIONAL and main and tensor.get("shape"):
                tensor["shape"] = [main[0]["shape"][0]]
                fit_data_to_shape(tensor)
    return case


def fit_data_to_shape(tensor: dict) -> None:
    shape, data = tensor.get("shape"), tensor.get("data")
    if not (isinstance(shape, list) and shape and isinstance(data, list) and data):
        return
    shape[:] = [int(d) for d in shape]  # JSON Schema's integers include 2.0
    per_example = math.prod(shape[1:])
    if per_example and math.prod(shape) > MAX_VALUES:
        shape[0] = max(1, MAX_VALUES // per_example)
    count = math.prod(shape)
    tensor["data"] = (data * (count // len(data) + 1))[:count]


def binary_body(inputs: list[dict], seed: int) -> tuple[bytes, int]:
    """A valid request for one of the model's inputs with the binary extension."""
    rng = np.random.default_rng(seed)
    inputs = [t for t in inputs if t["name"] not in OPTIONAL]
    tensor = inputs[seed % len(inputs)]
    shape = [int(rng.integers(1, 4)) if d == -1 else d for d in tensor["shape"]]
    dtype = DTYPES[tensor["datatype"]]
    values = rng.random(shape) if np.dtype(dtype).kind == "f" else np.zeros(shape)
    raw = binary.to_bytes(values.astype(dtype))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": tensor["name"],
                    "datatype": tensor["datatype"],
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, len(header)
