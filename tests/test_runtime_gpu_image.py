"""The GPU variant of the runtime image, short of building it (several GB: `hack/build-images.sh
runtime-onnx-gpu` does, on demand): its build arguments reach the build stage, the DEVICE switch runs as
written, and the onnxruntime-gpu it installs resolves on PyPI with its CUDA and cuDNN wheels, for the
image's platform."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "runtimes" / "onnx" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (m[1].upper(), m[2].strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, re.M) if m[1].isalpha()
    ]


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults (quotes removed as the builder does)."""
    found = {}
    for op, rest in instructions():
        if op == "FROM":
            break
        if op == "ARG":
            name, _, default = rest.partition("=")
            found[name] = shlex.split(default)[0] if default else ""
    return found


def build_stage() -> list[tuple[str, str]]:
    stages: list[list[tuple[str, str]]] = []
    for op, rest in instructions():
        if op == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((op, rest))
    return stages[0]


def device_step() -> str:
    (step,) = [rest for op, rest in build_stage() if op == "RUN" and '"$DEVICE"' in rest]
    return step


def test_device_defaults_to_cpu_and_reaches_the_build_stage() -> None:
    args = global_args()
    assert args["DEVICE"] == "cpu"
    # An ARG declared before FROM is empty inside a stage unless the stage declares it again: without
    # these the GPU build would quietly install the CPU onnxruntime.
    declared = {rest for op, rest in build_stage() if op == "ARG"}
    assert {"DEVICE", "ONNXRUNTIME_GPU"} <= declared


def test_the_device_switch_refuses_anything_but_cpu_or_gpu() -> None:
    step = device_step()
    for device, code in (("cpu", 0), ("tpu", 1), ("", 1)):
        out = subprocess.run(["sh", "-c", step], env={"DEVICE": device}, capture_output=True, text=True)
        assert out.returncode == code, (device, out.stderr)
        if code:
            assert f"DEVICE must be cpu or gpu, not '{device}'" in out.stderr
    assert subprocess.run(["sh", "-n", "-c", step]).returncode == 0
    assert "pip uninstall --quiet --yes onnxruntime" in step and "pip install" in step


def test_the_gpu_onnxruntime_is_pinned_within_the_runtimes_range() -> None:
    req = Requirement(global_args()["ONNXRUNTIME_GPU"])
    assert req.name == "onnxruntime-gpu" and req.extras == {"cuda", "cudnn"}
    (pin,) = req.specifier
    assert pin.operator == "=="
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (cpu,) = [Requirement(r) for r in runtime["runtime"] if Requirement(r).name == "onnxruntime"]
    assert cpu.specifier.contains(pin.version), f"{req} is outside the runtime extra's {cpu}"


def test_the_gpu_onnxruntime_resolves_on_pypi_with_cuda_and_cudnn(tmp_path: Path) -> None:
    requirement = global_args()["ONNXRUNTIME_GPU"]
    # The image's platform (Debian bookworm: glibc 2.36, x86_64, Python 3.11), whatever this machine is.
    # pip matches --platform tags exactly, so every manylinux tag that glibc accepts is named.
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--only-binary=:all:",
            "--python-version=3.11",
            *(f"--platform={p}" for p in platforms),
            f"--target={tmp_path / 'target'}",
            f"--report={report}",
            requirement,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, f"pip cannot resolve {requirement} from PyPI:\n{out.stderr[-2000:]}"
    installs = {
        i["metadata"]["name"].lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert installs["onnxruntime-gpu"] == str(next(iter(Requirement(requirement).specifier)).version)
    # The CUDA provider links cuBLAS, cuFFT, cuRAND, the CUDA runtime and cuDNN; every one must come along.
    for wheel in ("cuda-runtime", "cublas", "cufft", "curand", "cudnn"):
        assert any(name.startswith(f"nvidia-{wheel}") for name in installs), (wheel, sorted(installs))
