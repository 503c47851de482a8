"""bench/gpu_check.sh on a machine without an NVIDIA GPU (this one): what it can do here is refuse, fast,
before it installs gigabytes of CUDA wheels, and check its arguments. Real processes; PATH holds only
the tools the script uses, so the same holds on a machine whose nvidia-smi is elsewhere on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime_gpu_image import global_args

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
HELPER = ROOT / "bench" / "gpu_check.py"
# Found now: the tests run it with a PATH of their own.
BASH = shutil.which("bash") or "bash is missing on this machine"


@pytest.fixture
def no_gpu_path(tmp_path: Path) -> str:
    """A PATH with what the script calls and no nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in ("dirname", "cat", "sha256sum", "cut"):
        found = shutil.which(tool)
        assert found, f"{tool} is missing on this machine; the script needs it"
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def run(argv: list[str], path: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env}
    if path is not None:
        environ["PATH"] = path
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environ)


def test_no_gpu_fails_before_building_the_venv(no_gpu_path: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    out = run([BASH, str(SCRIPT)], no_gpu_path, ZEROSERVE_GPU_VENV=str(venv))
    assert out.returncode == 2, out.stderr
    assert "no NVIDIA GPU or driver here: nvidia-smi is not on PATH" in out.stderr
    assert not venv.exists(), "it started installing on a machine without a GPU"
    assert "Traceback" not in out.stderr


def test_run_refuses_too_without_a_gpu(no_gpu_path: str) -> None:
    out = run([sys.executable, str(HELPER), "run", "--seconds", "1"], no_gpu_path)
    assert out.returncode == 2 and "no NVIDIA GPU or driver here" in out.stderr, out.stderr


def test_missing_models_are_named_before_the_gpu_is_looked_for(no_gpu_path: str, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm-l6.onnx").write_bytes(b"")
    out = run([BASH, str(SCRIPT), "--models", str(tmp_path / "models")], no_gpu_path)
    assert out.returncode == 2
    assert f"efficientnet-lite0.onnx not in {tmp_path / 'models'}" in out.stderr
    assert "nvidia-smi" not in out.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--seconds", "0"], "--seconds must be above 0"),
        (["--concurrency", "0"], "--concurrency must be 1 to 256"),
        (["--rtol", "-1"], "--rtol must be above 0"),
        (["--seconds", "soon"], "invalid float value: 'soon'"),
        (["--batches", "1,0"], "--batches: must be batch sizes 1 to 256, comma-separated, not '1,0'"),
        (["--batches", "8,many"], "--batches: must be batch sizes 1 to 256, comma-separated, not '8,many'"),
        (["--batch-seconds", "0"], "--batch-seconds must be above 0"),
        (["--batching", "0"], "--batching must be 1 to 256"),
        (["--batching-clients", "300"], "--batching-clients must be 1 to 256"),
        (["--batching-delay-ms", "-1"], "--batching-delay-ms must be 0 or more"),
        (
            ["--searches", "FAST"],
            "--searches: must be EXHAUSTIVE, HEURISTIC or DEFAULT, comma-separated, not 'FAST'",
        ),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_refused_by_name(no_gpu_path: str, args: list[str], said: str) -> None:
    out = run([BASH, str(SCRIPT), *args], no_gpu_path)
    assert out.returncode == 2 and said in out.stderr, out.stderr


def test_it_installs_what_the_gpu_image_installs() -> None:
    out = run([sys.executable, str(HELPER), "requirement"])
    assert out.returncode == 0
    assert out.stdout.strip() == global_args()["ONNXRUNTIME_GPU"]
