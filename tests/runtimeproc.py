"""The runtime as a real process (`zeroserve serve`) on free loopback ports, plus tiny ONNX models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np
import onnx
from controlplane import free_port
from onnx import TensorProto, helper

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


class RuntimeProcess:
    def __init__(self, model: Path | str, log_path: Path, name: str = "model", **settings: object) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.name = name
        self.log_path = log_path
        self.argv = [
            str(Path(sys.executable).parent / "zeroserve"),
            "serve",
            f"--model-uri={model}",
            f"--model-name={name}",
            "--host=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--cache-dir={log_path.parent / 'cache'}",
            *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 60, wait_ready: bool = True) -> RuntimeProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"runtime not ready within {timeout}s:\n{self.tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "".join(deque(self.log().splitlines(keepends=True), maxlen=lines))

    def __enter__(self) -> RuntimeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
