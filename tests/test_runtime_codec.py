"""Codec and storage details of the runtime, without a server."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from zeroserve_runtime.errors import InvalidInput
from zeroserve_runtime.protocol import json_tensors, rest_codec
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


# -- JSON data decoded straight into typed buffers (protocol/json_tensors.py) --------------------------

DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
DATATYPES += ["FP16", "FP32", "FP64"]
# Well-formed and malformed `data`, each meant for a shape of 4 values.
DATA = [
    [1, 2, 3, 4],
    [[1, 2], [3, 4]],
    [[[1], [2]], [[3], [4]]],
    [[1, 2, 3, 4]],
    [-1, 0, 127, 128],
    [255, 256, -129, 65536],
    [2**31, -(2**31) - 1, 2**32, 0],
    [2**63 - 1, -(2**63), 0, 1],
    [0.5, -1.25, 3.0, 1e-300],
    [1e38, 1e39, -1e300, 5e-324],
    [1.0, 2, 3, 4],
    [True, False, True, False],
    [[True, False], [False, True]],
    [1, True, 0, False],
    [0.5, 0, 2, 0],
    ["a", "b", "c", "d"],
    [None, 1, 2, 3],
    [{"a": 1}, 1, 2, 3],
    [[1, 2], [3, "x"]],
    [1, 2, 3],
    [[1, 2], [3]],
    [[1, 2], [3, 4, 5]],
    [1, [2], 3, 4],
    [[1], 2, 3, 4],
    # Ragged in ways the parser's flattening hides: the right count of numbers, arrays among them.
    [1, [], [2, 3], 4],
    [[1, [2]], [3, 4]],
    [[1, 2], [3], [4, 5, 6], [7, 8]],
    [],
    [[], []],
    7,
    "1,2,3,4",
    None,
]
SHAPES = [[4], [2, 2], [1, 4], [0], [8]]


def reference_decode(body: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    """What the decoder before json_tensors made of a body: orjson, then tensors.from_json_data."""
    with monkeypatch.context() as m:
        m.setattr(json_tensors, "parse_request", lambda raw: None)
        return outcome(body)


def outcome(body: bytes) -> object:
    try:
        request = rest_codec.decode_request(body, None)
    except InvalidInput as e:
        return "refused", str(e)
    return {name: (a.dtype.str, a.shape, a.tolist()) for name, a in request.inputs.items()}


@pytest.fixture
def typed_always(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Small bodies take the typed decoder too (they normally keep orjson, which is faster for them)."""
    monkeypatch.setattr(json_tensors, "TYPED_FROM_BYTES", 0)
    return monkeypatch


@pytest.mark.parametrize("datatype", DATATYPES)
def test_typed_decoding_answers_as_the_reference_decoder(datatype: str, typed_always) -> None:
    for data, shape in itertools.product(DATA, SHAPES):
        body = request(data=data, shape=shape, datatype=datatype)
        assert outcome(body) == reference_decode(body, typed_always), body


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BOOL"])
def test_numeric_data_flat_or_nested_goes_straight_into_a_buffer(datatype: str) -> None:
    dtype = rest_codec.numpy_dtype(datatype, "x")
    for data in ([1, 2, 3, 4], [[1, 2], [3, 4]], [[[1], [2]], [[3], [4]]]):
        header = json_tensors.parse_request(request(data=data, datatype=datatype))
        assert header is not None
        decoded = header["inputs"][0]["data"]
        assert isinstance(decoded, json_tensors.FlatData)
        assert decoded.values.dtype == dtype
        assert decoded.values.tolist() == [1, 2, 3, 4]


def test_bool_as_numbers_is_typed_and_as_literals_is_left_to_the_reference() -> None:
    numbers = json_tensors.parse_request(request(data=[0, 2, 0.5, 0], datatype="BOOL"))
    assert numbers is not None
    assert numbers["inputs"][0]["data"].values.tolist() == [False, True, True, False]
    literals = json_tensors.parse_request(request(data=[True, False, True, True], datatype="BOOL"))
    assert literals is not None and literals["inputs"][0]["data"] == [True, False, True, True]


@pytest.mark.parametrize(
    "data",
    [[1, [], [2, 3], 4], [[1, [2]], [3, 4]], [[1, 2], [3], [4, 5, 6], [7, 8]], [[1, 2], [3, 4, 5]]],
    ids=["empty-beside-pair", "array-among-numbers", "rows-of-right-total", "long-row"],
)
def test_arrays_hidden_by_flattening_are_refused_as_ragged(data: list, typed_always) -> None:
    # Long enough for the typed decoder without the fixture too.
    padding = {"parameters": {"note": "x" * 4096}}
    body = json.dumps({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": data}], **padding})
    with pytest.raises(InvalidInput, match="ragged"):
        rest_codec.decode_request(body.encode(), None)


def test_strings_and_keys_holding_brackets_decode_through_the_reference(typed_always) -> None:
    body = json.dumps(
        {"id": "req[1]", "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, [2], 3]}]}
    ).encode()
    assert json_tensors.parse_request(body) is None
    with pytest.raises(InvalidInput, match="ragged"):
        rest_codec.decode_request(body, None)


def test_uint64_beyond_int64_is_taken_whole(typed_always) -> None:
    """numpy turns [2**64 - 1, 1] into floats, so the reference decoder refuses it; the buffer keeps it."""
    body = request(data=[2**64 - 1, 2**63, 1, 0], datatype="UINT64")
    assert rest_codec.decode_request(body, None).inputs["x"].ravel().tolist() == [2**64 - 1, 2**63, 1, 0]


def test_true_and_false_fit_every_integer_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference decoder's range check once raised OverflowError (a 500) for UINT64."""
    for datatype in ("UINT64", "INT8"):
        got = reference_decode(request(data=[True, False, True, True], datatype=datatype), monkeypatch)
        assert got == {"x": (rest_codec.numpy_dtype(datatype, "x").str, (2, 2), [[1, 0], [1, 1]])}


def test_nesting_deeper_than_numpy_allows_is_refused(typed_always) -> None:
    deep = json.loads("[" * 100 + "1" + "]" * 100)
    with pytest.raises(InvalidInput, match="ragged"):
        rest_codec.decode_request(request(data=deep, shape=[1]), None)


def test_the_parser_is_shared_across_requests_and_large_bodies_get_their_own(
    typed_always: pytest.MonkeyPatch,
) -> None:
    typed_always.setattr(json_tensors, "REUSED_PARSER_BYTES", 1024)
    small = request(data=[1, 2, 3, 4])
    large = request(data=list(range(1000)), shape=[1000], datatype="INT32")
    assert len(small) < 1024 < len(large)
    for body in (small, b'{"inputs": [', large, request(data=["a", 1, 2, 3]), small, large):
        try:
            rest_codec.decode_request(body, None)
        except InvalidInput:
            pass
    header = json_tensors.parse_request(small)
    assert header is not None and isinstance(header["inputs"][0]["data"], json_tensors.FlatData)
    assert rest_codec.decode_request(large, None).inputs["x"].tolist() == list(range(1000))
