"""The Open Inference Protocol (KServe v2) REST messages, and tensors in and out of them.

Spec: https://github.com/kserve/open-inference-protocol (REST). Clients of KServe, Triton and
MLServer send these bodies unchanged, as JSON or with the binary tensor data extension
(kiln.serve.replica.binary, Triton's clients' default):

    POST /v2/models/digits-cnn/infer
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [...]}]}
"""

import base64
import binascii
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from kiln.errors import RequestError
from kiln.serve.replica import binary

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
# The protocol's extensions Kiln answers over REST and gRPC alike (the server metadata's).
EXTENSIONS = [binary.EXTENSION, "classification"]  # classification: see classified()
NAMES = {np.dtype(t): name for name, t in DTYPES.items() if name != "BYTES"}
# The JSON values each datatype's data may hold (every other, integers: ints, or floats
# without a fraction, which JSON Schema counts as integers too).
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "BOOL": (bool,),
    "BYTES": (str,),
    "FP16": (int, float),
    "FP32": (int, float),
    "FP64": (int, float),
}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1 where any size goes (the batch dimension)


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None  # flat, or nested in row-major order; None when binary
    _raw: memoryview | None = PrivateAttr(None)  # its bytes, with the binary extension

    @property
    def binary_size(self) -> Any:
        return (self.parameters or {}).get("binary_data_size")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None  # binary_data: true, classification: k (top k)


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
    parameters: dict[str, Any] | None = None  # {"binary_data_size": n} for binary data
    data: list[Any] | None = None


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


def parse_request(body: bytes, header_length: str | None = None) -> InferenceRequest:
    """Whatever the Content-Type says (curl -d sends a form type), the body is JSON, or with
    `header_length` (the Inference-Header-Content-Length header) a JSON header and tensors."""
    header, raw = binary.split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        raise RequestError(describe(e.errors())) from None
    sized = [(i.name, i.binary_size) for i in request.inputs if i.binary_size is not None]
    parts = binary.slices(raw, sized)
    for given in request.inputs:
        given._raw = parts.get(given.name)
        if given._raw is None and given.data is None:
            raise RequestError(f"input {given.name!r} has no data (nor a binary_data_size)")
    return request


def describe(errors: Sequence[Any]) -> str:
    """The first of pydantic's errors in one line, with where it is in the body."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def decode(given: RequestInput, expected: TensorMetadata, missing_ok: bool = False) -> np.ndarray:
    """The request's tensor as an array, or a RequestError saying what was expected.
    `missing_ok`: a float input may hold missing values (JSON null, NaN, infinity), and a
    text one JSON null, which the model fills (a table's features: their training means)."""
    what = f"input {given.name!r}"
    if given.datatype != expected.datatype:
        raise RequestError(f"{what} has datatype {given.datatype}; expected {expected.datatype}")
    if not _fits(given.shape, expected.shape):
        raise RequestError(f"{what} has shape {given.shape}; expected {expected.shape}")
    if given.shape[0] == 0:
        raise RequestError(f"{what} is an empty batch; send at least one example")
    if given._raw is not None:
        dtype = None if given.datatype == "BYTES" else np.dtype(DTYPES[given.datatype])
        array = binary.tensor(given._raw, dtype, math.prod(given.shape), what)
    else:
        array = _from_json(given.data, given.datatype, what, missing_ok)
    if array.size != math.prod(given.shape):
        raise RequestError(
            f"{what}: {array.size} values do not fill shape {given.shape} "
            f"({math.prod(given.shape)} values)"
        )
    if array.dtype.kind == "f" and not missing_ok and not np.isfinite(array).all():
        raise RequestError(f"{what} contains NaN or infinity")
    return array.reshape(given.shape)


def _from_json(data: Any, datatype: str, what: str, missing_ok: bool = False) -> np.ndarray:
    """JSON data as an array, each value of the datatype's JSON type: numpy alone would turn
    true into 1.0 and "2" into 2, and wrap integers that do not fit. With `missing_ok`, a
    float's null is NaN."""
    dtype = np.dtype(DTYPES[datatype])
    allowed = JSON_TYPES.get(datatype, (int, float))  # integers: also 2.0 (JSON Schema's)
    if missing_ok and (dtype.kind == "f" or datatype == "BYTES"):
        allowed = (*allowed, type(None))
    seen = {type(v) for v in _leaves(data)}  # one pass over the values
    if not seen <= set(allowed):
        raise RequestError(f"{what}: data are not all {datatype} values")
    try:
        if dtype.kind in "iu" and float in seen:
            data = _whole_numbers(data)
        return np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{what}: data are not all {datatype} values") from None


def _whole_numbers(data: list[Any]) -> list[Any]:
    """Integer data with its floats (7.0) as ints, exactly; a fraction is a ValueError."""
    out: list[Any] = []
    for value in data:
        if type(value) is list:
            out.append(_whole_numbers(value))
        elif type(value) is float:
            if not value.is_integer():
                raise ValueError(value)
            out.append(int(value))
        else:
            out.append(value)
    return out


def _leaves(data: list[Any]) -> Iterator[Any]:
    """The values of flat or nested (row-major) data."""
    for value in data:
        if type(value) is list:
            yield from _leaves(value)
        else:
            yield value


def encode(name: str, array: np.ndarray, raw: bytes | None = None) -> ResponseOutput:
    """An output as JSON data, or, given its `raw` bytes, as their size (binary extension)."""
    datatype = datatype_of(array)
    if raw is not None:
        parameters = {"binary_data_size": len(raw)}
        return ResponseOutput(
            name=name, shape=list(array.shape), datatype=datatype, parameters=parameters
        )
    return ResponseOutput(
        name=name, shape=list(array.shape), datatype=datatype, data=array.ravel().tolist()
    )


def datatype_of(array: np.ndarray) -> str:
    return "BYTES" if array.dtype.kind in "OUS" else NAMES[array.dtype]


def encode_response(
    request: InferenceRequest, response: InferenceResponse, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary (the
    Inference-Header-Content-Length to send). `response.outputs` is filled in here."""
    raws: list[bytes] = []
    for name, array in outputs.items():
        raw = binary.to_bytes(array) if wants_binary(request, name) else None
        response.outputs.append(encode(name, array, raw))
        raws += [raw] if raw is not None else []
    header = response.model_dump_json(exclude_none=True).encode()
    return (b"".join([header, *raws]), len(header)) if raws else (header, None)


def wants_binary(request: InferenceRequest, output: str) -> bool:
    """An output's own `binary_data` parameter, else the request's `binary_data_output`."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    for wanted in request.outputs or []:
        if wanted.name == output:
            return bool((wanted.parameters or {}).get("binary_data", default))
    return default


def file_bytes(element: Any, name: str) -> bytes:
    """A BYTES element holding a file (a WAV recording, a PNG image): raw bytes with the
    binary extension, base64 text in JSON (whose strings cannot hold bytes)."""
    if isinstance(element, bytes):
        return element
    try:
        return base64.b64decode(str(element), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"input {name!r} in JSON must be base64 text of a file") from None


def classified(
    request: InferenceRequest,
    outputs: dict[str, np.ndarray],
    labels: Callable[[str], Sequence[str] | None],
) -> dict[str, np.ndarray]:
    """Triton's classification extension: an output asked for with the parameter
    `classification: k` answers, per row, its k largest values (all, when it has fewer) as
    BYTES "value:index", or "value:index:label" where `labels(output)` names the indices,
    largest first. Triton's clients ask with `InferRequestedOutput(name, class_count=k)`."""
    answered = dict(outputs)
    for wanted in request.outputs or []:
        k = (wanted.parameters or {}).get("classification")
        if k is None:
            continue
        if isinstance(k, float) and k.is_integer():  # JSON's 3.0 is the integer 3
            k = int(k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError(
                f"output {wanted.name!r}: classification is a count of classes (1 or more); "
                f"got {k!r}"
            )
        values = outputs[wanted.name]
        if values.dtype == object:
            raise RequestError(f"output {wanted.name!r} is text: only numbers classify")
        rows = values.reshape(len(values), -1)
        top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
        names = labels(wanted.name)
        answered[wanted.name] = np.array(
            [
                [f"{row[i]:f}:{i}" + (f":{names[i]}" if names is not None else "") for i in best]
                for row, best in zip(rows, top, strict=True)
            ],
            dtype=object,
        ).reshape(len(rows), top.shape[1])
    return answered


def pick_input(
    request: InferenceRequest, accepted: list[TensorMetadata], missing_ok: bool = False
) -> tuple[int, np.ndarray, dict[str, Any]]:
    """The one input a model takes (some take one of several alternatives): its index in
    `accepted`, its array, and its parameters over the request's (e.g. `sample_rate`).
    `missing_ok`: as `decode`'s."""
    if len(request.inputs) != 1:
        raise RequestError(f"send exactly one input; got {len(request.inputs)}")
    given = request.inputs[0]
    for index, expected in enumerate(accepted):
        if given.name == expected.name:
            parameters = {**(request.parameters or {}), **(given.parameters or {})}
            return index, decode(given, expected, missing_ok), parameters
    names = " or ".join(repr(t.name) for t in accepted)
    raise RequestError(f"unknown input {given.name!r}; this model takes {names}")


def take_columns(
    request: InferenceRequest, accepted: list[TensorMetadata]
) -> dict[str, np.ndarray]:
    """Every input of a model that takes a table column by column (each (N,), missing
    values allowed), by name; a RequestError when one is missing, unknown, sent twice or of
    another length."""
    given = {i.name: i for i in request.inputs}
    expected = {t.name: t for t in accepted}
    if unknown := [name for name in given if name not in expected]:
        raise RequestError(f"unknown input {unknown[0]!r}; this model takes {_names(accepted)}")
    if len(given) != len(request.inputs):
        raise RequestError("each input may come once")
    if missing := [name for name in expected if name not in given]:
        raise RequestError(f"input {missing[0]!r} is missing; this model takes {_names(accepted)}")
    columns = {name: decode(given[name], tensor, True) for name, tensor in expected.items()}
    if len({len(column) for column in columns.values()}) > 1:
        lengths = ", ".join(f"{name} {len(column)}" for name, column in columns.items())
        raise RequestError(
            f"the inputs are columns of one table: give each as many rows ({lengths})"
        )
    return columns


def _names(accepted: list[TensorMetadata]) -> str:
    return ", ".join(repr(t.name) for t in accepted)


def take_input(
    request: InferenceRequest, optional: TensorMetadata
) -> tuple[np.ndarray | None, InferenceRequest]:
    """An optional input sent beside the main one (a generator's `labels`), decoded, and the
    request without it; (None, request) when it was not sent."""
    given = next((i for i in request.inputs if i.name == optional.name), None)
    if given is None:
        return None, request
    rest = [i for i in request.inputs if i is not given]
    return decode(given, optional), request.model_copy(update={"inputs": rest})


def narrow_to(
    schemas: dict[str, Any],
    accepted: list[TensorMetadata],
    bounds: list[tuple[int, int] | None],
    outputs: list[TensorMetadata],
    optional: Sequence[tuple[TensorMetadata, tuple[int, int] | None]] = (),
    missing_ok: bool = False,
    every_input: bool = False,
) -> None:
    """The OpenAPI components of one model's document, as exact as JSON Schema allows: one
    input, named, typed and shaped as this model takes it (any batch size), its data flat and
    of that datatype within the values the model accepts (`bounds`, per input), the
    `optional` inputs that may come beside it, outputs by name (numeric ones may be asked
    for as classifications). What no JSON Schema can
    state: a tensor's data count is the product of its shape. `every_input`: the model takes
    all of `accepted` at once (a table's columns), not one of them."""
    request = schemas["InferenceRequest"]
    inputs = request["properties"]["inputs"]
    inputs["maxItems"] = 1 + len(optional)
    if optional:  # exactly one of the alternatives, beside them
        one_of = {"properties": {"name": {"enum": [t.name for t in accepted]}}}
        inputs |= {"contains": one_of, "minContains": 1, "maxContains": 1}
    request["example"] = {"inputs": [_example(accepted[0])]}
    if every_input:  # each once: as many items as names, and every name among them
        names = [{"contains": {"properties": {"name": {"const": t.name}}}} for t in accepted]
        inputs |= {"minItems": len(accepted), "maxItems": len(accepted), "allOf": names}
        request["example"] = {"inputs": [_example(t) for t in accepted]}
    schemas["RequestInput"]["oneOf"] = [
        _input_schema(tensor, limits, missing_ok)
        for tensor, limits in [*zip(accepted, bounds, strict=True), *optional]
    ]
    schemas["RequestOutput"]["properties"]["name"]["enum"] = [o.name for o in outputs]
    schemas["RequestOutput"]["oneOf"] = [
        {
            "properties": {
                "name": {"const": o.name},
                "parameters": {"properties": {"classification": _classification(o)}},
            }
        }
        for o in outputs
    ]


def _classification(output: TensorMetadata) -> dict[str, Any]:
    """The `classification` parameter an output may take: a count of classes, when numeric
    (null: not asked)."""
    if output.datatype == "BYTES":
        return {"type": "null"}
    return {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}


def _input_schema(
    tensor: TensorMetadata, bounds: tuple[int, int] | None, missing_ok: bool = False
) -> dict[str, Any]:
    dims = [{"type": "integer", "minimum": 1} if d == -1 else {"const": d} for d in tensor.shape]
    shape = {"type": "array", "prefixItems": dims, "minItems": len(dims), "maxItems": len(dims)}
    per_example = math.prod(d for d in tensor.shape if d != -1)
    items = _value_schema(tensor.datatype, bounds)
    if missing_ok and (tensor.datatype.startswith("FP") or tensor.datatype == "BYTES"):
        items = {"anyOf": [items, {"type": "null"}]}
    data = {"type": "array", "items": items, "minItems": per_example}
    return {
        "properties": {
            "name": {"const": tensor.name},
            "datatype": {"const": tensor.datatype},
            "shape": shape,
            "data": data,
            # JSON carries the data; binary_data_size belongs to the binary extension.
            "parameters": {"properties": {"binary_data_size": False}},
        },
        "required": ["data"],
    }


def _value_schema(datatype: str, bounds: tuple[int, int] | None) -> dict[str, Any]:
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    dtype = np.dtype(DTYPES[datatype])
    if dtype.kind == "f":  # larger magnitudes overflow to infinity, which is refused
        info: Any = np.finfo(dtype)
        lowest, highest = float(info.min), float(info.max)
    else:
        info = np.iinfo(dtype)
        lowest, highest = int(info.min), int(info.max)
    if bounds is not None:
        lowest, highest = max(lowest, bounds[0]), min(highest, bounds[1])
    kind = "number" if dtype.kind == "f" else "integer"
    return {"type": kind, "minimum": lowest, "maximum": highest}


def _example(tensor: TensorMetadata) -> dict[str, Any]:
    shape = [1 if d == -1 else d for d in tensor.shape]
    zero = {"BOOL": False, "BYTES": ""}.get(tensor.datatype, 0)
    data = [zero] * math.prod(shape)
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}


def _fits(shape: list[int], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(
        e == -1 and s >= 0 or s == e for s, e in zip(shape, expected, strict=True)
    )
