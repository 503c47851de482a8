"""`--device gpu` on this machine's onnxruntime, which has no CUDA provider: the runtime refuses to serve
on CPU unless CPU was allowed, and says which provider it runs on in the model metadata and a metric.
Real processes and the unmodified tritonclient."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from controlplane import free_port
from runtimeproc import RuntimeProcess

# What these tests take for granted: were onnxruntime-gpu installed here, `--device gpu` would serve.
pytestmark = pytest.mark.usefixtures("cpu_only_onnxruntime")


@pytest.fixture(scope="module")
def cpu_only_onnxruntime() -> None:
    providers = ort.get_available_providers()
    assert "CUDAExecutionProvider" not in providers, (
        f"this onnxruntime has {providers}: these tests need the CPU-only onnxruntime of the runtime extra"
    )


def _provider_metric(proc: RuntimeProcess) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(
            rf'^zeroserve_execution_provider\{{model="{proc.name}",provider="(\w+)"\}} (\S+)$',
            proc.metrics(),
            re.M,
        )
    }


def test_gpu_without_cuda_exits_1_naming_the_provider_and_the_opt_in(models, tmp_path: Path) -> None:
    # Nothing listens at this URI: had the runtime fetched before checking the device, it would fail
    # on the download instead, after waiting it out.
    uri = f"http://127.0.0.1:{free_port()}/linear.onnx"
    proc = RuntimeProcess(uri, tmp_path / "log", device="gpu").start(wait_ready=False)
    assert proc.process is not None and proc.process.wait(timeout=60) == 1
    log = proc.log()
    assert "--device gpu needs onnxruntime's CUDAExecutionProvider" in log, log
    assert re.search(r"but this onnxruntime [\d.]+ has only .*CPUExecutionProvider", log), log
    assert "--allow-cpu-fallback" in log and "ZEROSERVE_ALLOW_CPU_FALLBACK" in log
    assert "resources.gpu.allowCpuFallback" in log
    assert "127.0.0.1" not in log, "it tried the download before refusing the device"
    # Its last line is the reason: the pod's termination message (and so the ModelService's
    # RuntimeFailed condition) is the tail of the log.
    assert "CUDAExecutionProvider" in log.strip().splitlines()[-1]
    assert "Traceback" not in log


def test_cpu_fallback_when_allowed_serves_and_reports_cpu(models, tmp_path: Path) -> None:
    # As the operator sets it: the environment variable.
    proc = RuntimeProcess(models["linear"], tmp_path / "log", name="linear", device="gpu")
    proc.env["ZEROSERVE_ALLOW_CPU_FALLBACK"] = "true"
    with proc:
        assert "serving on CPU as allowed" in proc.log()
        with httpclient.InferenceServerClient(proc.address) as http:
            meta = http.get_model_metadata("linear")
        assert meta["parameters"] == {"execution_provider": "CPUExecutionProvider"}
        assert meta["platform"] == "onnxruntime_onnx"
        # gRPC's ModelMetadataResponse has no parameters; the response still parses.
        with grpcclient.InferenceServerClient(proc.grpc_address) as grpc:
            assert grpc.get_model_metadata("linear").name == "linear"
        assert _provider_metric(proc) == {"CPUExecutionProvider": 1.0}


def test_the_flag_turns_fallback_on_too(models, tmp_path: Path) -> None:
    proc = RuntimeProcess(models["linear"], tmp_path / "log", name="linear", device="gpu")
    proc.argv.append("--allow-cpu-fallback")
    with proc:
        with urllib.request.urlopen(f"{proc.url}/v2/models/linear", timeout=5) as r:
            assert b'"execution_provider":"CPUExecutionProvider"' in r.read().replace(b" ", b"")


def test_cpu_device_reports_cpu_in_metadata_and_metric(models, tmp_path: Path) -> None:
    with RuntimeProcess(models["ints"], tmp_path / "log", name="ints") as proc:
        with httpclient.InferenceServerClient(proc.address) as http:
            meta = http.get_model_metadata("ints")
        assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
        assert _provider_metric(proc) == {"CPUExecutionProvider": 1.0}
        assert "as allowed" not in proc.log()
