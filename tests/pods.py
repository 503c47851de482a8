"""Manifests and waits for tests that run real pods on the test node."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from controlplane import ControlPlane

NODE_CACHE_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "model-cache-node.yaml"
RUNTIME_UID = 1000

# The securityContext every Zeroserve pod runs under; the real kubelet and runc enforce it.
RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# A pod's PID 1 ignores SIGTERM unless it handles it, and would then wait out the grace period.
HELLO_SERVER = """
import http.server, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Hello).serve_forever()
"""


# Fields of a Knative revision's spec that a plain pod does not have.
KNATIVE_ONLY = ("timeoutSeconds", "containerConcurrency", "responseStartTimeoutSeconds", "idleTimeoutSeconds")


def modelservice(name: str, namespace: str, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"model": {"uri": uri, **spec.pop("model", {})}, "resources": {"memory": "1Gi"}, **spec},
    }


def revision_template(ksvc: dict[str, Any]) -> dict[str, Any]:
    """A Knative Service's revision template as a plain pod template: the operator's exact container,
    less what only Knative understands, from an image that is on the node."""
    template = copy.deepcopy(ksvc["spec"]["template"])
    for field in KNATIVE_ONLY:
        template["spec"].pop(field, None)
    (container,) = template["spec"]["containers"]
    container["imagePullPolicy"] = "Never"
    return template


def hello_deployment(name: str, image: str, replicas: int = 1) -> list[dict[str, Any]]:
    """A Deployment of a tiny HTTP server that answers with its pod's name, and its ClusterIP Service."""
    labels = {"app": name}
    container = {
        "name": "hello",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", HELLO_SERVER],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        "securityContext": RESTRICTED,
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]


def apply(plane: ControlPlane, namespace: str, docs: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(d) for d in docs)
    plane.kubectl("apply", "--namespace", namespace, "-f", "-", input=body)


def rollout(plane: ControlPlane, namespace: str, deployment: str, timeout: float = 120) -> None:
    """Wait for a Deployment's pods to be Ready; on timeout, fail with what the pods say."""
    got = plane.kubectl(
        "rollout",
        "status",
        f"deployment/{deployment}",
        "-n",
        namespace,
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 30,
    )
    if got.returncode != 0:
        raise AssertionError(
            f"{deployment} did not become ready: {got.stderr}\n{describe_pods(plane, namespace)}"
        )


def describe_pods(plane: ControlPlane, namespace: str) -> str:
    pods = plane.get_json("pods", "-n", namespace)["items"]
    lines = []
    for pod in pods:
        statuses = pod["status"].get("containerStatuses", [])
        lines.append(f"{pod['metadata']['name']}: {pod['status'].get('phase')} {json.dumps(statuses)[:600]}")
    events = plane.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
    return "\n".join(lines) + "\n" + events[-3000:]


def ready_object(plane: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object once its Ready condition is True (a ModelService, a Knative Service), else None."""
    got = plane.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if got.returncode:
        return None
    obj = json.loads(got.stdout)
    conds = obj.get("status", {}).get("conditions", [])
    return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else None


def pods(plane: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    return plane.get_json("pods", "-n", namespace, "-l", selector)["items"]


def wait_for(predicate, *, within: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last saw {last!r}")


def service_address(
    plane: ControlPlane, namespace: str, name: str, within: float = 30, port: int | None = None
) -> str:
    """The Service's ClusterIP, once kube-proxy routes every port of it: a Deployment can be rolled out
    a moment before kube-proxy has programmed its endpoints."""
    spec = plane.get_json("service", name, "-n", namespace)["spec"]
    ip = spec["clusterIP"]

    ports = [port] if port is not None else [p["port"] for p in spec["ports"]]

    def routed() -> bool:
        for number in ports:
            try:
                socket.create_connection((ip, number), timeout=2).close()
            except OSError:
                return False
        return True

    wait_for(routed, within=within, what=f"kube-proxy to route {namespace}/{name} at {ip}", interval=0.1)
    return ip


def run_python(
    plane: ControlPlane, namespace: str, name: str, code: str, within: float = 120
) -> tuple[str, str]:
    """Run `code` with python3 in a one-shot pod of the runtime image, under the restricted securityContext;
    return the pod's final phase and its logs."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": name,
                    "image": plane.images.runtime,  # type: ignore[union-attr]
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", code],
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }
    apply(plane, namespace, [pod])

    def finished() -> str | None:
        phase = plane.get_json("pod", name, "-n", namespace)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, within=within, what=f"pod {name} to finish")
    return phase, plane.kubectl("logs", "-n", namespace, name).stdout


@contextmanager
def node_model_cache(plane: ControlPlane, namespace: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The README's node-local model cache (examples/model-cache-node.yaml) in `namespace`: its
    PersistentVolume and claim, on a folder of this node prepared as the example says. Yields the folder
    and the example's `spec.model.cache`; removes the volume and the folder afterwards."""
    pv, pvc, ms = yaml.safe_load_all(NODE_CACHE_EXAMPLE.read_text())
    folder = Path(tempfile.mkdtemp(prefix="zeroserve-model-cache-", dir="/var/tmp"))
    os.chown(folder, RUNTIME_UID, RUNTIME_UID)
    folder.chmod(0o750)
    pv["metadata"]["name"] = f"zeroserve-model-cache-{namespace}"
    pv["spec"]["hostPath"]["path"] = str(folder)
    pv["spec"]["claimRef"]["namespace"] = pvc["metadata"]["namespace"] = namespace
    pvc["spec"]["volumeName"] = pv["metadata"]["name"]
    plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in (pv, pvc)))
    try:
        yield folder, ms["spec"]["model"]["cache"]
    finally:
        plane.kubectl("delete", "pvc", pvc["metadata"]["name"], "-n", namespace, "--wait=false", check=False)
        plane.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def free_cpu(plane: ControlPlane, excluding: str) -> float:
    """CPU the node has left for pods in namespace `excluding`: its allocatable CPU minus the requests of
    every other pod that holds some (Knative's activator, CoreDNS, Traefik, the operator)."""
    nodes = plane.get_json("nodes")["items"]
    allocatable = sum(_cpu(n["status"]["allocatable"]["cpu"]) for n in nodes)
    held = 0.0
    for pod in plane.get_json("pods", "-A")["items"]:
        if pod["metadata"]["namespace"] == excluding or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"]["containers"]:
            held += _cpu(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))
    return allocatable - held


class PodTimeline:
    """When each pod matching `selector` was created, got a node, became ready, was told to go and was gone,
    in wall-clock seconds, from a watch in a thread: what separates a slow start (waiting for a node's CPU
    held by a draining replica) from a slow runtime."""

    def __init__(self, kubeconfig: Path, namespace: str, selector: str) -> None:
        import threading

        from kubernetes import client, config, watch

        config.load_kube_config(config_file=str(kubeconfig))
        self._api = client.CoreV1Api()
        self._watch = watch.Watch()
        self.namespace, self.selector = namespace, selector
        self.pods: dict[str, dict[str, float]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.stop()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # the watch torn down at exit (locust's gevent closes its socket)
            if not self._watch._stop:
                raise

    def _follow(self) -> None:
        stream = self._watch.stream(
            self._api.list_namespaced_pod, self.namespace, label_selector=self.selector, timeout_seconds=3600
        )
        for event in stream:
            now = time.time()
            pod = event["object"]
            seen = self.pods.setdefault(
                pod.metadata.name, {"created": pod.metadata.creation_timestamp.timestamp()}
            )
            if pod.spec.node_name and "scheduled" not in seen:
                seen["scheduled"] = now
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and "ready" not in seen:
                seen["ready"] = now
            if pod.metadata.deletion_timestamp and "deleting" not in seen:
                seen["deleting"] = now
            if event["type"] == "DELETED":
                seen["gone"] = now

    def summary(self) -> dict[str, Any]:
        """Medians (s) of the waits, and how many pods had each."""
        import statistics

        def waits(a: str, b: str) -> list[float]:
            return [p[b] - p[a] for p in self.pods.values() if a in p and b in p]

        out: dict[str, Any] = {
            "pods": len(self.pods),
            "never_scheduled": sum("scheduled" not in p for p in self.pods.values()),
        }
        for name, (a, b) in {
            "created_to_scheduled_s": ("created", "scheduled"),
            "scheduled_to_ready_s": ("scheduled", "ready"),
            "deleting_to_gone_s": ("deleting", "gone"),
        }.items():
            w = waits(a, b)
            out[name] = {
                "n": len(w),
                "median": round(statistics.median(w), 2) if w else None,
                "max": round(max(w), 2) if w else None,
            }
        return out
