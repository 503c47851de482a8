"""Codec and storage details of the runtime, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from zeroserve_runtime.errors import InvalidInput
from zeroserve_runtime.protocol import rest_codec
from zeroserve_runtime.protocol.tensors import InferResponse
from zeroserve_runtime.storage import redact


def request(**item: object) -> bytes:
    base = {"name": "x", "shape": [2, 2], "datatype": "INT8", "data": [1, 2, 3, 4]}
    return json.dumps({"inputs": [base | item]}).encode()


def test_flat_and_nested_json_data_decode_the_same() -> None:
    flat = rest_codec.decode_request(request(), None).inputs["x"]
    nested = rest_codec.decode_request(request(data=[[1, 2], [3, 4]]), None).inputs["x"]
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.int8 and flat.shape == (2, 2)


def test_integers_out_of_range_are_refused_not_wrapped() -> None:
    with pytest.raises(InvalidInput, match="out of range for INT8"):
        rest_codec.decode_request(request(data=[1, 2, 3, 300]), None)
    with pytest.raises(InvalidInput, match="must be integers"):
        rest_codec.decode_request(request(data=[1, 2, 3, 4.5]), None)


def test_binary_outputs_follow_the_json_header() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([1, 0], dtype=np.int64)
    body, header_length = rest_codec.encode_response(
        InferResponse("m", "1", {"y": y, "z": z}, binary={"y": True, "z": False})
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes
    assert header["outputs"][1]["data"] == [1, 0]
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], np.float32).reshape(2, 3), y)


def test_redact_drops_credentials_and_signatures() -> None:
    uri = "https://user:secret@models.example.com:8443/v/m.onnx?X-Amz-Signature=abc#frag"
    assert redact(uri) == "https://models.example.com:8443/v/m.onnx"
    assert redact("s3://bucket/key.onnx") == "s3://bucket/key.onnx"
