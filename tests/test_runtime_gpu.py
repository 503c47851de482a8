"""`--device gpu`, right on either kind of machine, never skipped: where onnxruntime serves on CUDA (the
GPU image's onnxruntime-gpu with a GPU), the runtime serves on it and says so; where it cannot (this
machine's CPU-only onnxruntime, or onnxruntime-gpu that lists CUDA but cannot start it), it refuses to
serve on CPU unless CPU was allowed, and says which provider it runs on in the model metadata and a
metric. Which of the two a machine is comes from onnxruntime itself, by starting a session. Real
processes and the unmodified tritonclient."""

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

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def cuda_serves(models) -> bool:
    """Whether a session asked for CUDA here runs on it: False for the CPU-only onnxruntime (no CUDA
    provider) and for onnxruntime-gpu without a usable GPU (it falls back to CPU quietly)."""
    if CUDA not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    session = ort.InferenceSession(str(models["linear"]), providers=[CUDA, CPU])
    return session.get_providers()[0] == CUDA


def _provider_metric(proc: RuntimeProcess) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(
            rf'^zeroserve_execution_provider\{{model="{proc.name}",provider="(\w+)"\}} (\S+)$',
            proc.metrics(),
            re.M,
        )
    }


def test_gpu_serves_on_cuda_or_exits_1_naming_the_provider_and_the_opt_in(
    models, tmp_path: Path, cuda_serves: bool
) -> None:
    if cuda_serves:
        with RuntimeProcess(models["linear"], tmp_path / "log", name="linear", device="gpu") as proc:
            with httpclient.InferenceServerClient(proc.address) as http:
                meta = http.get_model_metadata("linear")
            assert meta["parameters"] == {"execution_provider": CUDA}
            assert _provider_metric(proc) == {CUDA: 1.0}
            assert "as allowed" not in proc.log()
        return
    # Nothing listens at this URI: had the runtime fetched before checking the device, it would fail
    # on the download instead, after waiting it out. (onnxruntime-gpu without a GPU lists CUDA, so its
    # refusal comes once the session is made, from the model file.)
    listed = CUDA in ort.get_available_providers()
    uri = models["linear"] if listed else f"http://127.0.0.1:{free_port()}/linear.onnx"
    proc = RuntimeProcess(uri, tmp_path / "log", device="gpu").start(wait_ready=False)
    assert proc.process is not None and proc.process.wait(timeout=60) == 1
    log = proc.log()
    if listed:
        assert f"could not start {CUDA}" in log, log
    else:
        assert f"--device gpu needs onnxruntime's {CUDA}" in log, log
        assert re.search(r"but this onnxruntime [\d.]+ has only .*CPUExecutionProvider", log), log
        assert "127.0.0.1" not in log, "it tried the download before refusing the device"
    assert "--allow-cpu-fallback" in log and "ZEROSERVE_ALLOW_CPU_FALLBACK" in log
    assert "resources.gpu.allowCpuFallback" in log
    # Its last line is the reason: the pod's termination message (and so the ModelService's
    # RuntimeFailed condition) is the tail of the log.
    assert CUDA in log.strip().splitlines()[-1]
    assert "Traceback" not in log


def test_cpu_fallback_when_allowed_serves_on_what_there_is_and_says_so(
    models, tmp_path: Path, cuda_serves: bool
) -> None:
    # As the operator sets it: the environment variable. Allowed, not forced: CUDA when it works.
    provider = CUDA if cuda_serves else CPU
    proc = RuntimeProcess(models["linear"], tmp_path / "log", name="linear", device="gpu")
    proc.env["ZEROSERVE_ALLOW_CPU_FALLBACK"] = "true"
    with proc:
        assert ("as allowed" in proc.log()) is not cuda_serves
        with httpclient.InferenceServerClient(proc.address) as http:
            meta = http.get_model_metadata("linear")
        assert meta["parameters"] == {"execution_provider": provider}
        assert meta["platform"] == "onnxruntime_onnx"
        # gRPC's ModelMetadataResponse has no parameters; the response still parses.
        with grpcclient.InferenceServerClient(proc.grpc_address) as grpc:
            assert grpc.get_model_metadata("linear").name == "linear"
        assert _provider_metric(proc) == {provider: 1.0}


def test_the_flag_turns_fallback_on_too(models, tmp_path: Path, cuda_serves: bool) -> None:
    provider = CUDA if cuda_serves else CPU
    proc = RuntimeProcess(models["linear"], tmp_path / "log", name="linear", device="gpu")
    proc.argv.append("--allow-cpu-fallback")
    with proc:
        with urllib.request.urlopen(f"{proc.url}/v2/models/linear", timeout=5) as r:
            assert f'"execution_provider":"{provider}"'.encode() in r.read().replace(b" ", b"")


def test_cpu_device_reports_cpu_in_metadata_and_metric_on_any_machine(models, tmp_path: Path) -> None:
    with RuntimeProcess(models["ints"], tmp_path / "log", name="ints") as proc:
        with httpclient.InferenceServerClient(proc.address) as http:
            meta = http.get_model_metadata("ints")
        assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
        assert _provider_metric(proc) == {"CPUExecutionProvider": 1.0}
        assert "as allowed" not in proc.log()
