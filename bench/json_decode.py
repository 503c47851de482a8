"""The runtime's JSON request decoder against the one it replaced, in process, on the bodies that matter:
the quickstart's digits model (64 numbers: tiny bodies, where a fixed cost per call would show), MiniLM's
three INT64 inputs at seq 128, EfficientNet-Lite0's ~1 MB image flat and nested, and MiniLM's
last_hidden_state at seq 128 (49,152 floats) encoded as a JSON response beside its inference.

  new        rest_codec.decode_request as it is (json_tensors from 2 kB, pysimdjson as_buffer)
  reference  the same function with json_tensors switched off: orjson, then numpy from Python numbers

Both decoders take turns in every round; medians over rounds, so noise on this shared machine lands on
both. Values are checked identical before anything is timed.

    .venv/bin/python bench/json_decode.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from runtimeproc import shared_model
from zeroserve_runtime.protocol import json_tensors, rest_codec
from zeroserve_runtime.protocol.tensors import InferResponse


def body(inputs: dict[str, np.ndarray], nested: bool = False) -> bytes:
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    items = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": datatypes[a.dtype],
            "data": a if nested else a.ravel(),
        }
        for n, a in inputs.items()
    ]
    return orjson.dumps({"inputs": items}, option=orjson.OPT_SERIALIZE_NUMPY)


def reference(raw: bytes):  # type: ignore[no-untyped-def]
    typed = json_tensors.parse_request
    json_tensors.parse_request = lambda _: None
    try:
        return rest_codec.decode_request(raw, None)
    finally:
        json_tensors.parse_request = typed


def per_call_us(fn, arg, seconds: float) -> float:  # type: ignore[no-untyped-def]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(arg)
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="per decoder per body per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = np.round(rng.standard_normal((1, 3, 224, 224)), 3).astype(np.float32)
    ids = {
        n: np.full((1, 128), v, dtype=np.int64)
        for n, v in (("input_ids", 2000), ("attention_mask", 1), ("token_type_ids", 0))
    }
    bodies = {
        "digits [1,64] FP32": body({"input": np.round(rng.uniform(0, 16, (1, 64))).astype(np.float32)}),
        "MiniLM 3x[1,128] INT64": body(ids),
        "EfficientNet flat": body({"input": image}),
        "EfficientNet nested": body({"input": image}, nested=True),
    }
    for name, raw in bodies.items():
        new, old = rest_codec.decode_request(raw, None), reference(raw)
        for key, value in old.inputs.items():
            assert value.dtype == new.inputs[key].dtype and np.array_equal(value, new.inputs[key]), name
    times: dict[str, dict[str, list[float]]] = {n: {"new": [], "reference": []} for n in bodies}
    for _ in range(args.rounds):
        for name, raw in bodies.items():
            times[name]["new"].append(
                per_call_us(lambda b: rest_codec.decode_request(b, None), raw, args.seconds)
            )
            times[name]["reference"].append(per_call_us(reference, raw, args.seconds))
    print(f"decode_request, median of {args.rounds} interleaved rounds")
    for name, raw in bodies.items():
        new, old = statistics.median(times[name]["new"]), statistics.median(times[name]["reference"])
        print(
            f"  {name:<24} {len(raw):>9,} B  new {new:9.1f} us  reference {old:9.1f} us  "
            f"reference/new {old / new:5.2f}x"
        )

    # Outputs: JSON encoding of MiniLM's largest output beside the inference that makes it.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        str(shared_model("minilm-l6.onnx")), options, providers=["CPUExecutionProvider"]
    )
    (hidden,) = session.run(["last_hidden_state"], ids)
    response = InferResponse("minilm", None, {"last_hidden_state": hidden})
    encode, run = [], []
    for _ in range(args.rounds):
        encode.append(per_call_us(lambda r: rest_codec.encode_response(r), response, args.seconds))
        run.append(per_call_us(lambda f: session.run(["last_hidden_state"], f), ids, args.seconds))
    e, r = statistics.median(encode), statistics.median(run)
    print(
        f"MiniLM seq 128 last_hidden_state ({hidden.size:,} floats): JSON encode {e / 1000:.2f} ms, "
        f"inference {r / 1000:.2f} ms, encode/inference {e / r:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
