"""REST bodies of the Open Inference Protocol v2: JSON tensors (flat or nested) and Triton's binary
tensor data extension (`Inference-Header-Content-Length`, `binary_data_size`, binary outputs).

A request's JSON is read by json_tensors, which decodes numeric `data` straight into arrays; what it
declines, orjson and tensors.from_json_data decode (and refuse, with their messages) as the reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from zeroserve_runtime.errors import InvalidInput
from zeroserve_runtime.protocol import json_tensors
from zeroserve_runtime.protocol.tensors import (
    NUMPY_TO_DATATYPE,
    InferRequest,
    InferResponse,
    RequestedOutput,
    checked_shape,
    from_buffer,
    from_json_data,
    numpy_dtype,
    shaped,
)

HEADER_LENGTH = "inference-header-content-length"
JSON_DUMPS = orjson.OPT_SERIALIZE_NUMPY


def _json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _flag(parameters: object, key: str) -> bool:
    if parameters is None:
        return False
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object")
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key} must be true or false")
    return value


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    if header_length is None:
        header_end = len(body)
    else:
        try:
            header_end = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < header_end <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_end} is beyond the body ({len(body)} bytes)"
            )
    view = memoryview(body)
    raw = body if header_end == len(body) else bytes(view[:header_end])
    header = json_tensors.parse_request(raw) if len(raw) >= json_tensors.TYPED_FROM_BYTES else None
    if header is None:
        header = _json_object(raw, "the request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request must have a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = header_end
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given twice")
        dtype = numpy_dtype(item.get("datatype"), name)
        shape = checked_shape(item.get("shape"), name)
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"input '{name}': parameters must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if header_length is None:
                raise InvalidInput(
                    f"input '{name}' has binary_data_size but no Inference-Header-Content-Length"
                )
            inputs[name] = from_buffer(view, offset, size, dtype, shape, name)
            offset += size
        elif isinstance(data := item.get("data"), json_tensors.FlatData):
            inputs[name] = shaped(data.values, shape, name)
        elif "data" in item:
            inputs[name] = from_json_data(data, dtype, shape, name)
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
        datatypes[name] = item["datatype"]
    if offset != len(body):
        raise InvalidInput(
            f"{len(body) - offset} bytes after the last binary input are not claimed by any input"
        )

    outputs = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for i, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput(f"outputs[{i}] must be an object with a 'name'")
            outputs.append(RequestedOutput(out["name"], _flag(out.get("parameters"), "binary_data")))
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        id=request_id,
        binary_outputs=_flag(header.get("parameters"), "binary_data_output"),
    )


def decode_index_request(body: bytes) -> bool:
    """A repository index request's `ready` flag (only ready models). tritonclient sends no body."""
    if not body.strip():
        return False
    ready = _json_object(body, "the repository index request").get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput(f"'ready' must be true or false, got {orjson.dumps(ready).decode()}")
    return ready


def content_headers(header_length: int | None) -> dict[str, str]:
    """The headers that describe a body from encode_response: JSON, or the binary tensor extension."""
    if header_length is None:
        return {"content-type": "application/json"}
    return {"content-type": "application/octet-stream", HEADER_LENGTH: str(header_length)}


def encode_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary."""
    outputs = []
    blobs = []
    for name, array in response.outputs.items():
        datatype = NUMPY_TO_DATATYPE[
            array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        ]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if response.binary.get(name):
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            # orjson writes numpy arrays natively (and fast), except float16.
            flat = array.ravel()
            entry["data"] = flat.astype(np.float32) if flat.dtype == np.float16 else flat
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "outputs": outputs}
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.id is not None:
        body["id"] = response.id
    header = orjson.dumps(body, option=JSON_DUMPS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
