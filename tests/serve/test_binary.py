"""The binary tensor data extension (pure logic, no Ray): bodies built by Triton's own client
library decode to the same arrays as JSON, answers parse with it, and every malformed body
is a RequestError that says what was wrong."""

import json

import numpy as np
import pytest
import tritonclient.http as triton

from kiln.errors import RequestError
from kiln.serve.replica import binary
from kiln.serve.replica.protocol import (
    InferenceResponse,
    TensorMetadata,
    decode,
    encode_response,
    parse_request,
)

IMAGE = TensorMetadata(name="input", datatype="FP32", shape=[-1, 1, 8, 8])


def triton_body(array: np.ndarray, datatype: str, binary_data: bool = True, outputs=None):
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary_data)
    return triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs)


@pytest.mark.parametrize(
    "datatype, array",
    [
        ("FP32", np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)),
        ("FP64", np.arange(6, dtype=np.float64).reshape(2, 3)),
        ("INT64", np.array([[1, -2, 3]], dtype=np.int64)),
        ("INT32", np.array([7, 8], dtype=np.int32)),
        ("INT16", np.array([-3, 300], dtype=np.int16)),
        ("INT8", np.array([-3, 3], dtype=np.int8)),
        ("UINT8", np.array([0, 255], dtype=np.uint8)),
        ("BOOL", np.array([True, False, True])),
        ("BYTES", np.array([b"seven", b"", "\u00e9t\u00e9".encode()], dtype=object)),
    ],
)
def test_triton_binary_bodies_decode_like_json(datatype, array):
    expected = TensorMetadata(name="input", datatype=datatype, shape=[-1, *array.shape[1:]])
    body, header_length = triton_body(array, datatype)
    assert header_length is not None and header_length < len(body)
    decoded = decode(parse_request(body, str(header_length)).inputs[0], expected)
    as_json, none = triton_body(array, datatype, binary_data=False)
    assert none is None
    np.testing.assert_array_equal(decoded, array)
    from_json = decode(parse_request(as_json).inputs[0], expected)
    if datatype == "BYTES":  # JSON carries BYTES as strings
        from_json = np.array([s.encode() for s in from_json], dtype=object)
    np.testing.assert_array_equal(from_json, decoded)


def test_numeric_tensors_are_views_of_the_body():
    body, header_length = triton_body(np.ones((1, 1, 8, 8), np.float32), "FP32")
    array = decode(parse_request(body, str(header_length)).inputs[0], IMAGE)
    assert array.base is not None and not array.flags.owndata


def response_for(request_parameters: dict, outputs_wanted: list | None = None):
    request = parse_request(
        json.dumps(
            {
                "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                "parameters": request_parameters,
                **({"outputs": outputs_wanted} if outputs_wanted is not None else {}),
            }
        ).encode()
    )
    outputs = {
        "probabilities": np.array([[0.25, 0.75]], np.float32),
        "label": np.array(["1"], dtype=object),
    }
    response = InferenceResponse(model_name="m", model_version="1", outputs=[])
    return encode_response(request, response, outputs)


def test_binary_answers_parse_with_tritons_client():
    body, header_length = response_for({"binary_data_output": True})
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), [[0.25, 0.75]])
    assert result.as_numpy("label").tolist() == [b"1"]


def test_binary_per_output_and_json_by_default():
    body, header_length = response_for({}, [{"name": "label", "parameters": {"binary_data": True}}])
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["probabilities", "label"]
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]
    assert body[header_length:] == b"\x01\x00\x00\x001"
    assert response_for({})[1] is None  # plain JSON, no header length


def body_with(inputs: list[dict], raw: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + raw, str(len(header))


FLOATS = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}
TEXT = TensorMetadata(name="t", datatype="BYTES", shape=[-1])


def floats(size, raw: bytes) -> tuple:
    """An image input claiming `size` binary bytes, followed by `raw`."""
    return (*body_with([{**FLOATS, "parameters": {"binary_data_size": size}}], raw), IMAGE)


def texts(elements: int, raw: bytes) -> tuple:
    """A BYTES input of `elements` elements whose binary data is `raw`."""
    tensor = {"name": "t", "shape": [elements], "datatype": "BYTES"}
    return (*body_with([{**tensor, "parameters": {"binary_data_size": len(raw)}}], raw), TEXT)


@pytest.mark.parametrize(
    "body, header_length, expected, message",
    [
        (b'{"inputs": []}', "999", IMAGE, "Inference-Header-Content-Length is 999"),
        (b"{}", "two", IMAGE, "must be a byte count"),
        (*floats(256, bytes(255)), "goes past the end of the body"),
        (*floats(252, bytes(252)), "binary_data_size 252 does not fit its shape"),
        (*floats(256, bytes(260)), "4 bytes of binary data follow"),
        (*body_with([FLOATS], b""), IMAGE, "has no data"),
        (*floats(-1, b""), "binary_data_size must be a byte count"),
        (*floats(256, np.full(64, np.nan, np.float32).tobytes()), "NaN or infinity"),
        (*texts(1, b"\x09\x00\x00\x00ab"), "length prefix says 9 bytes; 2 are left"),
        (*texts(1, b"\x01\x00"), "length prefix is cut off"),
        (*texts(2, b"\x01\x00\x00\x00a"), "1 BYTES elements do not fill its shape"),
    ],
)
def test_malformed_binary_bodies_say_what_was_wrong(body, header_length, expected, message):
    with pytest.raises(RequestError, match=message):
        decode(parse_request(body, header_length).inputs[0], expected)


def test_to_bytes_is_little_endian():
    assert binary.to_bytes(np.array([1], dtype=">i4")) == b"\x01\x00\x00\x00"
