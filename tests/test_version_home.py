"""Every component reports the one version, and none imports the `zeroserve` CLI package to get it: the
runtime, the functions and the operator ship without the CLI's dependencies, in their own images."""

from __future__ import annotations

import json
import subprocess
import sys

import zeroserve

# Run in a fresh interpreter: this one has imported the CLI package already (the test imports it).
PROBE = """
import json, sys
import zeroserve_runtime.server, zeroserve_runtime.grpc_server, zeroserve_runtime.functions.core
import zeroserve_operator.settings
from zeroserve_runtime.inference import server_metadata
from zeroserve_operator.settings import OperatorSettings
cli = sorted(m for m in sys.modules if m == "zeroserve" or m.startswith("zeroserve."))
print(json.dumps({
    "cli_modules": cli,
    "runtime": server_metadata()["version"],
    "operator_image": OperatorSettings().onnx_image,
}))
"""


def test_components_get_the_version_without_importing_the_cli_package() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    found = json.loads(out.splitlines()[-1])
    assert found["cli_modules"] == [], "a component imported the CLI package"
    assert found["runtime"] == zeroserve.__version__
    assert found["operator_image"] == f"ghcr.io/zeroserve/runtime-onnx:{zeroserve.__version__}"
