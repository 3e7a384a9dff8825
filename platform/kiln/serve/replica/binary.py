"""The Open Inference Protocol's binary tensor data extension, which Triton's clients use by
default: a JSON header of `Inference-Header-Content-Length` bytes, then each tensor's raw
little-endian bytes in the order of the header's tensors, sized by `binary_data_size`. BYTES
elements are each a 4-byte little-endian length and that many bytes.

    header, raw = split(body, request.headers.get(HEADER_LENGTH))
    array = tensor(raw_of_input, np.dtype(np.float32), count=64, what="input 'input'")
    body = b"".join([header_json, *(to_bytes(a) for a in arrays)])

Decoding is zero-copy: numeric tensors are numpy views of the request body.
"""

import numpy as np

from kiln.errors import RequestError

HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
EXTENSION = "binary_tensor_data"  # its name in the server metadata's `extensions`


def split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part of a body (all of it is JSON without the header)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise RequestError(f"{HEADER_LENGTH} must be a byte count; got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise RequestError(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def slices(raw: memoryview, sizes: list[tuple[str, int]]) -> dict[str, memoryview]:
    """Each (tensor name, binary_data_size) its consecutive bytes; every byte must be claimed."""
    parts, offset = {}, 0
    for name, size in sizes:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"input {name!r}: binary_data_size must be a byte count")
        if offset + size > len(raw):
            raise RequestError(
                f"input {name!r}: binary_data_size {size} goes past the end of the body "
                f"({len(raw) - offset} bytes of binary data are left)"
            )
        parts[name] = raw[offset : offset + size]
        offset += size
    if offset != len(raw):
        raise RequestError(
            f"{len(raw) - offset} bytes of binary data follow the inputs' binary_data_size"
        )
    return parts


def tensor(raw: memoryview, dtype: np.dtype | None, count: int, what: str) -> np.ndarray:
    """`count` elements of `dtype` (None: BYTES) read from `raw`, flat."""
    if dtype is None:
        return _bytes_elements(raw, count, what)
    little = dtype.newbyteorder("<")
    if len(raw) != count * little.itemsize:
        raise RequestError(
            f"{what}: binary_data_size {len(raw)} does not fit its shape "
            f"({count} values of {little.itemsize} bytes = {count * little.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=little)


def _bytes_elements(raw: memoryview, count: int, what: str) -> np.ndarray:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(f"{what}: a BYTES element's 4-byte length prefix is cut off")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise RequestError(
                f"{what}: a BYTES element's length prefix says {size} bytes; "
                f"{len(raw) - offset} are left"
            )
        elements.append(bytes(raw[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise RequestError(
            f"{what}: {len(elements)} BYTES elements do not fill its shape ({count})"
        )
    return np.array(elements, dtype=object)


def to_bytes(array: np.ndarray) -> bytes:
    """A tensor's raw bytes: little-endian values, or length-prefixed BYTES elements."""
    if array.dtype.kind in "OUS":
        encoded = [e if isinstance(e, bytes) else str(e).encode() for e in array.ravel()]
        return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()
