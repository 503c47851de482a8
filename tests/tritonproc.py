"""A real tritonserver (from the nvidia-pytriton wheel, unpacked by hack/build-control-plane.sh) started
with exactly the command line the operator gives Triton's container, on a repository written by the real
`zeroserve fetch` with the init container's environment.

The command line names /models and, through NVIDIA's image, finds its backends under /opt/tritonserver.
Those paths are given to it in a private mount namespace (`unshare --mount`), so not one flag differs
from what runs in the pod; the host sees neither mount.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from controlplane import default_cache_dir

TRITON_ROOT = default_cache_dir() / "bin" / "tritonserver-root"
PYTHON_MODEL = Path(__file__).resolve().parent / "triton" / "model.py"
ZEROSERVE = Path(sys.executable).parent / "zeroserve"
# The paths the operator's command line and NVIDIA's image use.
MODELS_MOUNT = Path("/models")
IMAGE_ROOT = "/opt/tritonserver"


class TritonError(RuntimeError):
    pass


def require_tritonserver() -> Path:
    binary = TRITON_ROOT / "bin" / "tritonserver"
    if not binary.exists():
        raise TritonError(
            f"tritonserver is missing at {binary}: run hack/build-control-plane.sh, which unpacks it from "
            "the nvidia-pytriton wheel (PYTRITON_VERSION in hack/versions.env)"
        )
    if os.geteuid() != 0:
        raise TritonError("running tritonserver at the image's paths needs root (a private mount namespace)")
    return binary


def run_fetch(
    init_container: dict[str, Any], repository: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    """The init container, as a process: its args and environment, with the pod's volumes as folders."""
    env = {e["name"]: e["value"] for e in init_container["env"]}
    env.update(ZEROSERVE_MODEL_REPOSITORY=str(repository), ZEROSERVE_CACHE_DIR=str(cache))
    return subprocess.run(
        [str(ZEROSERVE), *init_container["args"]],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def to_python_backend(model_folder: Path) -> tuple[str, str]:
    """Serve the fetched model.onnx through tests/triton/model.py: the config's platform line becomes the
    Python backend, and nothing else changes. Returns (generated config, config as served)."""
    config = model_folder / "config.pbtxt"
    generated = config.read_text()
    served = generated.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    assert served.count("\n") == generated.count("\n") and served != generated, generated
    config.write_text(served)
    shutil.copy(PYTHON_MODEL, model_folder / "1" / "model.py")
    return generated, served


def _ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as e:
                raise TritonError(f"port {port}, which the operator gives Triton, is in use here: {e}") from e


class Triton:
    """tritonserver with `args` (the container's, starting with "tritonserver") serving `repository` as
    /models; a context manager that stops it."""

    def __init__(self, args: list[str], repository: Path, log: Path, ports: list[int]) -> None:
        require_tritonserver()
        assert args[0] == "tritonserver", args
        self.args, self.repository, self.log_path, self.ports = args, repository, log, ports
        self.proc: subprocess.Popen[bytes] | None = None
        self._made_mountpoint = False

    def __enter__(self) -> Triton:
        _ports_free(self.ports)
        if not MODELS_MOUNT.exists():
            # A mount point must exist; the folder stays empty on the host and goes at exit.
            MODELS_MOUNT.mkdir()
            self._made_mountpoint = True
        script = (
            'mount -t tmpfs tmpfs /opt && mkdir /opt/tritonserver && mount --bind "$0" /opt/tritonserver '
            '&& mount --bind "$1" /models && shift && exec "$@"'
        )
        env = {
            "PATH": f"{IMAGE_ROOT}/bin:{os.environ['PATH']}",
            # The wheel's libraries, found by a relative RPATH that the image's layout does not keep (in
            # NVIDIA's image they are in its LD_LIBRARY_PATH too).
            "LD_LIBRARY_PATH": str(TRITON_ROOT.resolve().parent.parent / "nvidia_pytriton.libs"),
            # The Python backend's stub embeds the system's python3, which ignores PYTHONPATH, and wants
            # numpy 1: tests/triton/model.py adds the packages hack/build-control-plane.sh put beside it.
            "ZEROSERVE_TEST_SITE_PACKAGES": str(TRITON_ROOT.resolve().parent.parent / "site-packages"),
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    script,
                    str(TRITON_ROOT),
                    str(self.repository),
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self, port: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TritonError(f"tritonserver exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TritonError(f"tritonserver not ready within {within:.0f}s:\n{self.log()[-3000:]}")

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        if self._made_mountpoint:
            MODELS_MOUNT.rmdir()
