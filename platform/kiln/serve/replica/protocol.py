"""The Open Inference Protocol (KServe v2) REST messages, and tensors in and out of them.

Spec: https://github.com/kserve/open-inference-protocol (REST). Clients of KServe, Triton and
MLServer send these bodies unchanged:

    POST /v2/models/digits-cnn/infer
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [...]}]}
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.errors import RequestError

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NAMES = {np.dtype(t): name for name, t in DTYPES.items() if name != "BYTES"}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1 where any size goes (the batch dimension)


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]  # flat, or nested in row-major order


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.1] * 4}
                ]
            }
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ErrorBody(BaseModel):
    error: str


def parse_request(body: bytes) -> InferenceRequest:
    """Whatever the Content-Type says (curl -d sends a form type), the body must be JSON."""
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(describe(e.errors())) from None


def describe(errors: Sequence[Any]) -> str:
    """The first of pydantic's errors in one line, with where it is in the body."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def decode(given: RequestInput, expected: TensorMetadata) -> np.ndarray:
    """The request's tensor as an array, or a RequestError saying what was expected."""
    what = f"input {given.name!r}"
    if given.datatype != expected.datatype:
        raise RequestError(f"{what} has datatype {given.datatype}; expected {expected.datatype}")
    if not _fits(given.shape, expected.shape):
        raise RequestError(f"{what} has shape {given.shape}; expected {expected.shape}")
    if given.shape[0] == 0:
        raise RequestError(f"{what} is an empty batch; send at least one example")
    try:
        array = np.asarray(given.data, dtype=DTYPES[given.datatype])
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{what}: data are not all {given.datatype} values") from None
    if array.size != math.prod(given.shape):
        raise RequestError(
            f"{what}: {array.size} values do not fill shape {given.shape} "
            f"({math.prod(given.shape)} values)"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(f"{what} contains NaN or infinity")
    return array.reshape(given.shape)


def encode(name: str, array: np.ndarray) -> ResponseOutput:
    datatype = "BYTES" if array.dtype.kind in "OUS" else NAMES[array.dtype]
    return ResponseOutput(
        name=name, shape=list(array.shape), datatype=datatype, data=array.ravel().tolist()
    )


def pick_input(
    inputs: list[RequestInput], accepted: list[TensorMetadata]
) -> tuple[int, np.ndarray]:
    """The one input a model takes (some take one of several alternatives): its index in
    `accepted` and its array."""
    if len(inputs) != 1:
        raise RequestError(f"send exactly one input; got {len(inputs)}")
    given = inputs[0]
    for index, expected in enumerate(accepted):
        if given.name == expected.name:
            return index, decode(given, expected)
    names = " or ".join(repr(t.name) for t in accepted)
    raise RequestError(f"unknown input {given.name!r}; this model takes {names}")


def _fits(shape: list[int], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(
        e == -1 and s >= 0 or s == e for s, e in zip(shape, expected, strict=True)
    )
