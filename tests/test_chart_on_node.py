"""The chart installed with the pinned helm onto the cluster with a real node: the operator runs as a pod
from its locally built image, under the chart's ServiceAccount and securityContext, which the real
kubelet and runc enforce."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import yaml
from controlplane import ControlPlane
from pods import apply, pods, wait_for
from release import install_operator, uninstall

ROOT = Path(__file__).resolve().parent.parent


def test_operator_pod_from_the_chart_reconciles_a_modelservice(node_cluster: ControlPlane) -> None:
    images = node_cluster.images
    assert images is not None
    release_ns = f"zs-{uuid.uuid4().hex[:8]}"
    # The chart grants a Role in Knative's namespace (config-features, read by name); Knative's own
    # components are not needed for this test.
    node_cluster.kubectl("create", "namespace", "knative-serving", check=False)
    install_operator(node_cluster, "chart-test", release_ns)
    try:
        (pod,) = pods(node_cluster, release_ns, "app.kubernetes.io/name=zeroserve")
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["restartCount"] == 0, status
        # What the kubelet enforced: the process runs as uid 1000 on a read-only root filesystem.
        probe = (
            "import os\n"
            "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print(os.getuid(), e.errno)\n"
        )
        pod_name = pod["metadata"]["name"]
        out = node_cluster.kubectl("exec", "-n", release_ns, pod_name, "--", "python3", "-c", probe).stdout
        assert out.split() == ["1000", "30"], out  # 30: EROFS

        models_ns = f"ml-{uuid.uuid4().hex[:8]}"
        node_cluster.kubectl("create", "namespace", models_ns)
        body = yaml.safe_load((ROOT / "examples" / "modelservice-cpu.yaml").read_text())
        apply(node_cluster, models_ns, [body])

        def reconciled() -> dict | None:
            ms = node_cluster.get_json("modelservice", "efficientnet", "-n", models_ns)
            return ms if (ms.get("status") or {}).get("observedGeneration") == 1 else None

        ms = wait_for(reconciled, within=60, what="the operator pod to reconcile the ModelService")
        assert {c["type"]: c["status"] for c in ms["status"]["conditions"]}["SpecValid"] == "True"
        ksvc = node_cluster.get_json("services.serving.knative.dev", "efficientnet", "-n", models_ns)
        assert ksvc["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"]
        assert ksvc["spec"]["template"]["spec"]["containers"][0]["image"] == images.runtime
        logs = node_cluster.kubectl("logs", "-n", release_ns, pod_name).stdout
        assert "Forbidden" not in logs and "Traceback" not in logs, logs[-3000:]
        metrics = node_cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{release_ns}/pods/{pod_name}:9090/proxy/metrics"
        ).stdout
        success = r'^zeroserve_operator_reconciles_total\{result="success"\} ([0-9.]+)$'
        reconciles = re.search(success, metrics, re.M)
        assert reconciles and float(reconciles.group(1)) >= 1, metrics
        node_cluster.kubectl("delete", "namespace", models_ns, "--wait=false")
    finally:
        # One operator per cluster: the next tests install their own.
        uninstall(node_cluster, "chart-test", release_ns)
