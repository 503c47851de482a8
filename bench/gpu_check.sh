#!/usr/bin/env bash
# The onnx runtime on a real NVIDIA GPU, in one command, on a machine with the GPU and its driver:
#   1. checks that there is one (nvidia-smi) and that the models are there, before installing anything;
#   2. builds a venv with Zeroserve's runtime and the onnxruntime-gpu (with its CUDA and cuDNN wheels)
#      that the GPU image installs (runtimes/onnx/Dockerfile's ONNXRUNTIME_GPU);
#   3. runs bench/gpu_check.py: `zeroserve serve --device gpu` on EfficientNet-Lite0 and MiniLM-L6 must run
#      on CUDAExecutionProvider and answer as a CPU session does, within tolerance; p50 and throughput
#      through the runtime beside raw onnxruntime-gpu, in the same run.
#
#   bench/gpu_check.sh [--models DIR] [--seconds 10] [--concurrency 8] [--batches 1,8,16,32] [--batching 16]
#                      [--out figures.json] [--keep LOG_DIR]
#   ZEROSERVE_GPU_VENV=...   where the venv goes (default: ~/.cache/zeroserve/venv-gpu; reused when current)
#   PYTHON=...               the python 3.11+ that builds it (default: python3)
#   ONNXRUNTIME_GPU=...      the onnxruntime-gpu requirement (default: the GPU image's, runtimes/onnx/Dockerfile)
# Exit status: 0 every check passed, 1 a check failed, 2 no GPU, bad arguments or missing models.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
venv=${ZEROSERVE_GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/zeroserve/venv-gpu}
python=${PYTHON:-python3}

log() { printf '[gpu-check] %s\n' "$*" >&2; }

command -v "$python" >/dev/null || { log "error: $python not found; set PYTHON to a python 3.11+"; exit 2; }
# Standard library only: fails in a second on a machine without a GPU, before gigabytes of wheels.
"$python" "$here/gpu_check.py" preflight "$@"

# The image's pin (CUDA 12) unless told otherwise, as the Dockerfile's build-arg of the same name is:
# onnxruntime-gpu 1.27 and later are built for CUDA 13.
requirement=${ONNXRUNTIME_GPU:-$("$python" "$here/gpu_check.py" requirement)}
stamp="$venv/.zeroserve-gpu-check"
want="$requirement $root $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "building $venv with $requirement"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "${root}[runtime]"
  # Both distributions install the package `onnxruntime`: the GPU one replaces the CPU one, as in the image.
  "$venv/bin/python" -m pip uninstall --quiet --yes onnxruntime
  "$venv/bin/python" -m pip install --quiet "$requirement"
  echo "$want" >"$stamp"
fi
exec "$venv/bin/python" "$here/gpu_check.py" run --zeroserve "$venv/bin/zeroserve" "$@"
