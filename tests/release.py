"""The Helm chart installed with the pinned helm onto the test cluster, with the node's local images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from controlplane import ControlPlane
from pods import rollout

CHART = Path(__file__).resolve().parent.parent / "charts" / "zeroserve"
# Where the node tests install the operator from the chart.
OPERATOR_NAMESPACE = "zeroserve-system"


def helm(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    return subprocess.run(
        [str(plane.binaries.helm), *args], capture_output=True, text=True, timeout=300, env=env
    )


def install_operator(plane: ControlPlane, release: str, namespace: str, *settings: str) -> str:
    """`helm install` the chart with the locally built operator and runtime images; wait until the operator
    pod is Ready. Returns the operator Deployment's name."""
    images = plane.images
    assert images is not None, "the operator runs on a node"
    repository, tag = images.operator.rsplit(":", 1)
    result = helm(
        plane,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        f"--set=image.repository={repository}",
        f"--set=image.tag={tag}",
        "--set=image.pullPolicy=Never",
        f"--set=modelServiceDefaults.onnxImage={images.runtime}",
        *(f"--set={s}" for s in settings),
        "--wait",
        "--timeout=120s",
    )
    assert result.returncode == 0, result.stderr
    # The chart's fullname drops the chart's name when the release already contains it.
    (found,) = plane.get_json("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")[
        "items"
    ]
    deployment = found["metadata"]["name"]
    rollout(plane, namespace, deployment)
    return deployment


def uninstall(plane: ControlPlane, release: str, namespace: str) -> None:
    helm(plane, "uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s")
