"""A JSON request body whose `data` arrays go straight into typed buffers, never into Python numbers.

simdjson parses the body once; the header fields (names, shapes, datatypes, parameters, outputs) become
Python objects as usual, and each numeric `data` array is copied by the parser into a buffer of doubles
or 64-bit integers (`Array.as_buffer`), which numpy narrows to the declared datatype. Building the
150,528 Python floats of an image was most of the JSON path's time.

The parser flattens nested `data` of any depth, ragged or not, so the nesting is checked apart from the
numbers: every array on the way down must have the length of the first one at its depth (a loop per
innermost row, never per element), and the body must hold no `[` beyond the arrays accounted for, so no
array hides among the numbers. Whatever this module cannot prove well-formed it leaves to the reference
decoder (orjson and `tensors.from_json_data`), which owns every error message: a request is refused
exactly as before, for exactly the same reasons.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson

from zeroserve_runtime.protocol.tensors import DATATYPES, MAX_RANK

# Below this size a body decodes faster through orjson's Python objects than through the parser's
# proxies (the two meet at about 1.5 kB: 250 numbers), so small bodies such as the digits model's keep
# the reference decoder.
TYPED_FROM_BYTES = 2048

# A parser keeps the buffers of the largest document it has parsed (about 5 bytes per byte of it), and
# a fresh one costs page faults for all of them (3x the parse of a 1 MB body). Bodies up to this size
# share one parser per thread; larger ones get their own, freed with them.
REUSED_PARSER_BYTES = 4 << 20

# What `as_buffer` writes for each datatype's values: doubles for floats (and BOOL given as numbers),
# 64-bit integers for integers, narrowed afterwards with a range check.
_BUFFER_TYPES = {"d": np.dtype("<f8"), "i": np.dtype("<i8"), "u": np.dtype("<u8")}
_LIMITS = {d: (int(np.iinfo(d).min), int(np.iinfo(d).max)) for d in DATATYPES.values() if d.kind in "iu"}


@dataclass(frozen=True)
class FlatData:
    """A `data` array already decoded: its values, flat, in the declared datatype."""

    values: np.ndarray


_local = threading.local()


def _parser(size: int) -> simdjson.Parser:
    if size > REUSED_PARSER_BYTES:
        return simdjson.Parser()
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser(max_capacity=REUSED_PARSER_BYTES)
    return parser


def parse_request(raw: bytes) -> dict[str, Any] | None:
    """The request's JSON as orjson would give it, except that each well-formed numeric `data` array of a
    known datatype is a FlatData. None when the reference decoder must judge the body: it is not valid
    JSON, not an object, has duplicate keys, or a `[` this module cannot account for."""
    try:
        document = _parser(len(raw)).parse(raw)
    except (ValueError, RuntimeError):  # invalid JSON, too deep, or a parser still in use
        return None
    try:
        # The counts of `[` found: in the header's own arrays and strings, and in each data array.
        brackets = [0]
        header = _request(document, brackets)
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError):
        return None
    finally:
        del document  # the parser is reusable only once no proxy of its document is left
    if header is None or raw.count(b"[") != brackets[0]:
        return None
    return header


def _request(document: object, brackets: list[int]) -> dict[str, Any] | None:
    if not isinstance(document, simdjson.Object):
        return None
    header = _fields(document, brackets, skip="inputs")
    if header is None:
        return None
    if "inputs" in header:
        inputs = document["inputs"]
        if not isinstance(inputs, simdjson.Array):
            return None
        brackets[0] += 1
        items = []
        for item in inputs:
            if not isinstance(item, simdjson.Object):
                return None
            fields = _input(item, brackets)
            if fields is None:
                return None
            items.append(fields)
        header["inputs"] = items
    return header


def _fields(obj: simdjson.Object, brackets: list[int], skip: str) -> dict[str, Any] | None:
    """An object's fields as Python values, but for `skip`, which only marks its place."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):  # orjson keeps the last of a repeated key, simdjson the first
        return None
    fields: dict[str, Any] = {}
    for key in keys:
        if key == skip:
            fields[key] = None
            continue
        value = obj[key]
        if isinstance(value, simdjson.Array):
            value = value.as_list()
        elif isinstance(value, simdjson.Object):
            value = value.as_dict()
        arrays = _arrays_in(value)
        if arrays is None or "[" in key:
            return None
        brackets[0] += arrays
        fields[key] = value
    return fields


def _arrays_in(value: object) -> int | None:
    """How many `[` a Python value's JSON holds; None if a string holds one, as a string may spell it
    escaped or not."""
    if isinstance(value, list):
        total = 1
        for v in value:
            n = _arrays_in(v)
            if n is None:
                return None
            total += n
        return total
    if isinstance(value, dict):
        total = 0
        for k, v in value.items():
            n = _arrays_in(v)
            if n is None or "[" in k:
                return None
            total += n
        return total
    if isinstance(value, str) and "[" in value:
        return None
    return 0


def _input(item: simdjson.Object, brackets: list[int]) -> dict[str, Any] | None:
    fields = _fields(item, brackets, skip="data")
    if fields is None or "data" not in fields:
        return fields
    data = item["data"]
    dtype = DATATYPES.get(fields.get("datatype")) if isinstance(fields.get("datatype"), str) else None
    decoded = _flat(data, dtype, brackets) if isinstance(data, simdjson.Array) and dtype else None
    if decoded is None:
        # The reference decoder finds what is wrong with it, or (BOOL as true/false) converts it.
        decoded = data.as_list() if isinstance(data, simdjson.Array) else _python(data)
        arrays = _arrays_in(decoded)
        if arrays is None:
            return None
        brackets[0] += arrays
    fields["data"] = decoded
    return fields


def _python(value: object) -> object:
    return value.as_dict() if isinstance(value, simdjson.Object) else value


def _flat(data: simdjson.Array, dtype: np.dtype, brackets: list[int]) -> FlatData | None:
    """The array's numbers in `dtype`, if it is rectangular and they fit; else None."""
    arrays = _rectangular_arrays(data)
    if arrays is None:
        return None
    if dtype.kind == "u" and dtype.itemsize == 8:
        of_type = "u"
    elif dtype.kind in "iu":
        of_type = "i"
    else:
        of_type = "d"
    try:
        wide = np.frombuffer(data.as_buffer(of_type=of_type), dtype=_BUFFER_TYPES[of_type])
    except (ValueError, TypeError):  # strings, true/false, null, objects, or integers out of 64 bits
        return None
    if dtype.kind == "b":
        values = wide != 0
    elif dtype == wide.dtype:
        values = wide
    else:
        if dtype.kind in "iu" and wide.size:
            low, high = _LIMITS[dtype]
            if wide.min() < low or wide.max() > high:
                return None
        values = wide.astype(dtype)
    brackets[0] += arrays
    return FlatData(values)


def _rectangular_arrays(data: simdjson.Array) -> int | None:
    """How many arrays `data` is made of, if every array at each depth has the length of the first one
    there; else None. Arrays hidden among the numbers are not seen here: the caller's count of `[` finds
    them."""
    dims = []
    node: object = data
    while isinstance(node, simdjson.Array):
        dims.append(len(node))
        if not dims[-1]:
            break
        node = node[0]
    if len(dims) > MAX_RANK:  # numpy's own limit makes the reference call deeper nesting ragged
        return None
    level = [data]
    for depth, length in enumerate(dims):
        inner = depth + 1 < len(dims)
        below = []
        for array in level:
            if len(array) != length:
                return None
            if inner:
                for child in array:
                    if not isinstance(child, simdjson.Array):
                        return None
                    below.append(child)
        if inner:
            level = below
    return sum(math.prod(dims[:depth]) for depth in range(len(dims)))
