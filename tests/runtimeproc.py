"""The runtime as a real process (`zeroserve serve`) on free loopback ports, plus tiny ONNX models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from controlplane import free_port
from onnx import TensorProto, helper
from serviceproc import OipProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
# CI lays shared/ beside the clone; ZEROSERVE_SHARED_MODELS points elsewhere when it is not.
SHARED_MODELS = Path(os.environ.get("ZEROSERVE_SHARED_MODELS", REPO_ROOT.parent / "shared" / "models"))


def shared_model(name: str) -> Path:
    path = SHARED_MODELS / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the real models live in ../shared/models beside the repository "
            "(see its README), or set ZEROSERVE_SHARED_MODELS; tests that use them cannot run without them"
        )
    return path


def binary_body(feeds: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """Triton's binary tensor extension: a JSON header, then each tensor's raw little-endian bytes; all
    outputs asked for in binary. Returns the body and its Inference-Header-Content-Length."""
    datatypes = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": datatypes[a.dtype],
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in feeds.items()
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(a.tobytes() for a in feeds.values()), len(header)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def linear_model(path: Path, batch: str | int = "batch") -> Path:
    """y = x @ W + b and z = relu(y): FP32 [batch, 4] -> two FP32 [batch, 3] outputs."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
    b = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 3]),
        ],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [3], b),
        ],
    )
    return _save(graph, path)


def int_model(path: Path) -> Path:
    """Two INT64 [batch, seq] inputs -> their INT64 sum and an FP64 mean over seq."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "mask"], ["sum"]),
            helper.make_node("Cast", ["sum"], ["sum_f"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceMean", ["sum_f"], ["mean"], keepdims=0, axes=[1]),
        ],
        "ints",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mean", TensorProto.DOUBLE, ["batch"]),
        ],
    )
    return _save(graph, path)


def lookup_model(path: Path) -> Path:
    """A [10, 4] table looked up by INT64 index [batch] -> FP32 [batch, 4]; an index past 9 fails inside
    onnxruntime, which is how a data-dependent failure looks."""
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("table", TensorProto.FLOAT, [10, 4], table.ravel())],
    )
    return _save(graph, path)


class RuntimeProcess(OipProcess):
    what = "runtime"

    def __init__(self, model: Path | str, log_path: Path, name: str = "model", **settings: object) -> None:
        http_port = free_port()
        self.grpc_port = free_port()
        self.name = name
        argv = [
            str(Path(sys.executable).parent / "zeroserve"),
            "serve",
            f"--model-uri={model}",
            f"--model-name={name}",
            "--host=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--cache-dir={log_path.parent / 'cache'}",
            *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
        ]
        super().__init__(argv, http_port, log_path)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        return self.get(f"{self.url}/metrics")
