"""The test cluster's real node: kubelet, containerd, the CNI bridge and kube-proxy, on this machine only."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from controlplane import KUBERNETES_SERVICE_IP, Binaries, ControlPlane
from node import NODE_IP, NODE_NAME, OFF_BRIDGE_PROBE, POD_CIDR, Images, host_state, remove_leftovers
from pods import apply, hello_deployment, pods, rollout, run_python, service_address, wait_for


def test_node_is_ready_with_pinned_versions_and_bridge_address(node_cluster: ControlPlane) -> None:
    node = node_cluster.get_json("node", NODE_NAME)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == node_cluster.binaries.versions["K8S_VERSION"]
    assert info["kubeProxyVersion"] in ("", info["kubeletVersion"])  # deprecated field, may be empty
    assert info["containerRuntimeVersion"].startswith("containerd://1.6.")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert not node["spec"].get("taints")


def test_pods_get_bridge_addresses_and_cluster_ips_route_to_them(node_cluster: ControlPlane, ns: str) -> None:
    images: Images = node_cluster.images  # type: ignore[assignment]
    apply(node_cluster, ns, hello_deployment("hello", images.runtime, replicas=2))
    rollout(node_cluster, ns, "hello")
    running = pods(node_cluster, ns, "app=hello")
    names = {p["metadata"]["name"] for p in running}
    for pod in running:
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(POD_CIDR)
    cluster_ip = service_address(node_cluster, ns, "hello")

    # From the host, through kube-proxy's rules: both replicas answer behind the one address. Until
    # kube-proxy has synced, the address may still lead where a deleted Service's did (the API server
    # reuses freed addresses, and earlier tests delete many): such answers are waited out, not failures.
    def seen_from_host() -> set[str]:
        seen = set()
        for _ in range(20):
            try:
                with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=5) as r:
                    seen.add(r.read().decode())
            except (urllib.error.URLError, OSError) as e:
                seen.add(f"not a replica: {e}")
        return seen

    assert wait_for(lambda: seen_from_host() == names, within=30, what=f"both pods behind {cluster_ip}")

    # From inside a pod, through the API server's exec into kubelet (client certificates both ways):
    # pod to ClusterIP to pod on the same bridge, and pod to the API server through the `kubernetes`
    # Service with its own service-account token.
    pod = sorted(names)[0]
    probe = (
        "import json, ssl, urllib.request\n"
        f"print(urllib.request.urlopen('http://{cluster_ip}/', timeout=5).read().decode())\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
        "ctx = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
        "req = urllib.request.Request('https://kubernetes.default.svc/version',"
        " headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=5))['gitVersion'])\n"
    )
    # No cluster DNS on this node yet: the API server by its Service's ClusterIP, which its certificate
    # names.
    probe = probe.replace("kubernetes.default.svc", KUBERNETES_SERVICE_IP)
    out = node_cluster.kubectl("exec", "-n", ns, pod, "--", "python3", "-c", probe).stdout.split()
    assert out[0] in names
    assert out[1] == node_cluster.binaries.versions["K8S_VERSION"]

    logs = node_cluster.kubectl("logs", "-n", ns, pod).stdout
    assert logs == ""  # the server logs nothing; what matters is that kubelet served the request


def test_nothing_leaves_the_bridge(node_cluster: ControlPlane, ns: str) -> None:
    """A pod's attempt to reach an address off the bridge is dropped by the fixture's rule and counted
    there, and no packet for it reaches another interface."""
    node = node_cluster.node
    assert node is not None
    dropped_before = node.dropped_packets()
    escaped_before = node.escaped_probe_packets()
    probe = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(3)\n"
        f"try:\n    s.connect(('{OFF_BRIDGE_PROBE}', 80))\n"
        "except OSError as e:\n    print('blocked', e); sys.exit(0)\n"
        "print('connected'); sys.exit(1)\n"
    )
    phase, logs = run_python(node_cluster, ns, "escape", probe, within=60)
    assert phase == "Succeeded" and "blocked" in logs, logs
    assert node.dropped_packets() > dropped_before
    assert node.escaped_probe_packets() == escaped_before == 0


@pytest.mark.own_node
def test_teardown_leaves_nothing_and_a_second_start_works(
    binaries: Binaries, images: Images, tmp_path: Path
) -> None:
    # A node killed outright (a benchmark stopped by hand) leaves state behind that the next start clears:
    # clear it first, so that the comparison is about this test's own starts.
    remove_leftovers()
    before = host_state()
    for attempt in range(2):
        plane = ControlPlane(
            binaries, tmp_path / f"start{attempt}", install_knative=False, images=images.only("runtime-onnx")
        )
        with plane:
            ns = "teardown"
            plane.kubectl("create", "namespace", ns)
            apply(plane, ns, hello_deployment("hello", images.runtime))
            rollout(plane, ns, "hello")
            assert host_state() != before  # the node really changed the host
        after = host_state()
        assert after == before, json.dumps(
            {k: [before[k], after[k]] for k in before if before[k] != after[k]}
        )


def _diff(a: object, b: object) -> object:
    """What `a` has that `b` has not, for lists and dicts of lists; `a` itself otherwise."""
    if isinstance(a, list) and isinstance(b, list):
        return sorted(set(map(str, a)) - set(map(str, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _diff(v, b.get(k, [])) for k, v in a.items() if v != b.get(k)}
    return a
