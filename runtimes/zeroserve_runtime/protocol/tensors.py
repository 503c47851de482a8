"""Open Inference Protocol v2 tensors: datatypes, and the checks every transport's decoder shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from zeroserve_runtime.errors import InvalidInput

# OIP datatype -> numpy dtype (little-endian, as the binary extension and raw gRPC contents are).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_TO_DATATYPE = {dtype: name for name, dtype in DATATYPES.items()}

# onnxruntime's type strings -> OIP datatype.
ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    binary_outputs: bool = False  # the binary_data_output parameter: every output binary by default


@dataclass
class InferResponse:
    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None
    binary: dict[str, bool] = field(default_factory=dict)


def numpy_dtype(datatype: object, name: str) -> np.dtype:
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}': datatype must be a string such as \"FP32\"")
    try:
        return DATATYPES[datatype]
    except KeyError:
        if datatype == "BYTES":
            raise InvalidInput(f"input '{name}': BYTES tensors are not supported by this runtime") from None
        raise InvalidInput(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}"
        ) from None


MAX_RANK = 32  # numpy's own limit is 64; no model here comes close
MAX_ELEMENTS = 2**40  # far beyond any request body, far below int64 overflow


def checked_shape(shape: object, name: str) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}': rank {len(shape)} is more than {MAX_RANK}")
    dims = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise InvalidInput(f"input '{name}': shape {list(shape)} must hold integers")
        if dim < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        if dim > MAX_ELEMENTS:
            raise InvalidInput(f"input '{name}': dimension {dim} is absurdly large")
        dims.append(dim)
    # Zero-size tensors are valid, so bound the product of the other dimensions too.
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}': shape {dims} has absurdly many elements")
    return tuple(dims)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def from_buffer(
    buffer: bytes | memoryview, offset: int, size: int, dtype: np.dtype, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """A zero-copy view of `size` bytes at `offset`, checked against shape and datatype."""
    expected = element_count(shape) * dtype.itemsize
    if size != expected:
        datatype = NUMPY_TO_DATATYPE[dtype]
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes, got {size}"
        )
    if offset + size > len(buffer):
        raise InvalidInput(
            f"input '{name}': binary data is truncated ({len(buffer) - offset} of {size} bytes)"
        )
    return np.frombuffer(buffer, dtype=dtype, count=element_count(shape), offset=offset).reshape(shape)


def from_json_data(data: object, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON `data`, flat or nested, as an array of `shape`. Numbers only: no strings parsed as numbers."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a list")
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(
            f"input '{name}': data is ragged: nested lists must all have the same length"
        ) from None
    kind = array.dtype.kind
    if array.size and kind not in "biuf":
        raise InvalidInput(f"input '{name}': data must be numeric, got {array.dtype.name} values")
    if dtype.kind in "iu" and kind == "f" and array.size:
        raise InvalidInput(f"input '{name}': {NUMPY_TO_DATATYPE[dtype]} data must be integers")
    if dtype.kind in "iu" and kind in "iu" and array.size:  # true/false fit every integer type
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input '{name}': values out of range for {NUMPY_TO_DATATYPE[dtype]}")
    return shaped(array.astype(dtype, copy=False), shape, name)


def shaped(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON `data` values, already in their datatype, as an array of `shape`."""
    if values.size != element_count(shape):
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {element_count(shape)} values, got {values.size}"
        )
    return values.reshape(shape)
