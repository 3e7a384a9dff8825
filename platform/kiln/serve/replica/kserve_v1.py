"""KServe's V1 protocol, the default of KServe's Python SDK (`InferenceRESTClient()`) and of
TensorFlow Serving's REST clients ("row" format), translated to and from the Open Inference
Protocol the models answer:

    POST /v1/models/digits-cnn:predict   {"instances": [[...64 pixels...], ...]}  ("inputs" too)
    200                                  {"predictions": [{"label": 3, "probabilities": [...]}]}

An instance is one example: a bare value (nested lists) for a model that takes one input, or
an object keyed by input name (a table's columns, a generator's seed and its labels). Text and
files are strings (files base64, as in the Open Inference Protocol's JSON), or TensorFlow
Serving's `{"b64": "..."}`. An instance that holds as many values as one example of the input
is taken in the input's shape: 64 numbers, or 8 rows of 8, for an image of (1, 8, 8). A
prediction is the model's one output for its instance, or an object of its outputs by name.
The index application routes these paths (kiln.serve.replica.served) to the model's replica.
"""

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from kiln.errors import RequestError
from kiln.serve.replica.protocol import InferenceRequest, RequestInput, TensorMetadata


def to_request(
    body: bytes,
    accepted: Sequence[TensorMetadata],
    optional: Sequence[TensorMetadata] = (),
    by_name: bool = False,
) -> InferenceRequest:
    """The Open Inference Protocol request of a V1 body. `accepted`: the inputs a model takes
    one of (all of them with `by_name`: a table's columns); `optional`: those it may take
    beside it. A RequestError says what is wrong with the body."""
    instances = _instances(body)
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if all(named):
        return InferenceRequest(inputs=_named_inputs(instances, [*accepted, *optional]))
    if any(named):
        raise RequestError("instances are either all objects (inputs by name) or all values")
    if by_name:
        names = ", ".join(t.name for t in accepted)
        raise RequestError(f"this model takes its inputs by name: send objects of {names}")
    text = isinstance(instances[0], str) or _is_b64(instances[0])  # its BYTES input, if any
    tensor = next((t for t in accepted if (t.datatype == "BYTES") == text), accepted[0])
    return InferenceRequest(inputs=[_input(tensor, instances)])


def predictions(outputs: dict[str, np.ndarray]) -> list[Any]:
    """Each example's outputs: its value of the one output, or an object of them by name."""
    rows = {name: _rows(array) for name, array in outputs.items()}
    if len(rows) == 1:
        return next(iter(rows.values()))
    count = len(next(iter(rows.values()), []))
    return [{name: values[i] for name, values in rows.items()} for i in range(count)]


def _instances(body: bytes) -> list[Any]:
    """The body's examples: its `instances`, or its `inputs` in the same row format (KServe's
    V1 servers take either), unless those are the Open Inference Protocol's tensors."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON ({e})") from None
    key = next((k for k in ("instances", "inputs") if isinstance(parsed, dict) and k in parsed), "")
    if not key or key == "inputs" and _tensors(parsed["inputs"]):
        hint = "; an Open Inference Protocol body goes to /v2/models/NAME/infer" if key else ""
        raise RequestError(f'KServe V1 takes {{"instances": [...]}}, one per example{hint}')
    instances = parsed[key]
    if not isinstance(instances, list) or not instances:
        raise RequestError(f"{key}: a list of at least one example")
    return instances


def _tensors(inputs: Any) -> bool:
    """Whether `inputs` are the Open Inference Protocol's (named, with a datatype, shape or
    data), not examples."""
    return isinstance(inputs, list) and any(
        isinstance(i, dict) and "name" in i and {"datatype", "shape", "data"} & set(i)
        for i in inputs
    )


def _named_inputs(
    instances: list[dict[str, Any]], known: Sequence[TensorMetadata]
) -> list[RequestInput]:
    tensors = {t.name: t for t in known}
    names = list(instances[0])
    for index, instance in enumerate(instances):
        if unknown := [n for n in instance if n not in tensors]:
            raise RequestError(
                f"instance {index}: unknown input {unknown[0]!r}; this model takes "
                + ", ".join(tensors)
            )
        if set(instance) != set(names):
            raise RequestError(f"instance {index} names other inputs than instance 0 ({names})")
    return [_input(tensors[n], [i[n] for i in instances]) for n in names]


def _input(tensor: TensorMetadata, values: list[Any]) -> RequestInput:
    """The batch of `values` as the input `tensor`, in its shape where an example holds as
    many values as the shape does (the values' nesting is the protocol's row-major order)."""
    if tensor.datatype == "BYTES":
        values = _unwrapped(values)
    try:
        shape = list(np.shape(values))
    except ValueError:  # numpy refuses a ragged nesting
        raise RequestError(f"input {tensor.name!r}: instances differ in shape") from None
    example = tensor.shape[1:]
    if -1 not in example and math.prod(shape[1:]) == math.prod(example):
        shape = [len(values), *example]
    return RequestInput(name=tensor.name, shape=shape, datatype=tensor.datatype, data=values)


def _is_b64(value: Any) -> bool:
    """TensorFlow Serving's binary value, `{"b64": "..."}`."""
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _unwrapped(value: Any) -> Any:
    """Text values with each binary one as the base64 text it holds."""
    if _is_b64(value):
        return value["b64"]
    if isinstance(value, list):
        return [_unwrapped(v) for v in value]
    return value


def _rows(array: np.ndarray) -> list[Any]:
    if array.dtype == object:  # bytes (a file, an image) as {"b64": ...}
        wrapped = [
            {"b64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
            for v in array.ravel().tolist()
        ]
        cells = np.empty(len(wrapped), dtype=object)
        cells[:] = wrapped
        array = cells.reshape(array.shape)
    return array.tolist()
