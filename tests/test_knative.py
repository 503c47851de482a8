"""Knative Serving's own controller, webhook, autoscaler, activator and queue-proxy on the test node, with
Traefik's Knative provider as the ingress: a Knative Service becomes Ready, answers through the ingress,
scales to zero and answers again cold, through the activator."""

from __future__ import annotations

import time
import urllib.request

import pytest
import yaml
from controlplane import ControlPlane, default_cache_dir
from knative import DOMAIN, TRAEFIK_MANIFEST, TRAEFIK_NAMESPACE
from pods import HELLO_SERVER, RESTRICTED, apply, pods, service_address, wait_for


def ingress_get(plane: ControlPlane, host: str, path: str = "/", timeout: float = 30) -> tuple[int, bytes]:
    """GET through Traefik's public entrypoint, as a client outside the cluster would, by Host."""
    ip = service_address(plane, TRAEFIK_NAMESPACE, "traefik")
    request = urllib.request.Request(f"http://{ip}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def hello_ksvc(name: str, image: str) -> dict:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "image": image,
                            "command": ["python3", "-c", HELLO_SERVER],
                            "ports": [{"containerPort": 8080}],
                            "securityContext": RESTRICTED,
                        }
                    ]
                }
            }
        },
    }


def ready(plane: ControlPlane, ns: str, name: str) -> dict | None:
    ksvc = plane.get_json("ksvc", name, "-n", ns)
    conditions = {c["type"]: c for c in ksvc.get("status", {}).get("conditions", [])}
    return ksvc if conditions.get("Ready", {}).get("status") == "True" else None


def test_knative_service_answers_scales_to_zero_and_answers_cold(
    knative_cluster: ControlPlane, ns: str
) -> None:
    plane = knative_cluster
    apply(plane, ns, [hello_ksvc("hello", plane.images.runtime)])  # type: ignore[union-attr]
    ksvc = wait_for(lambda: ready(plane, ns, "hello"), within=120, what="the Knative Service to be Ready")
    host = f"hello.{ns}.{DOMAIN}"
    assert ksvc["status"]["url"] == f"http://{host}"

    status, body = wait_for(
        lambda: (r := ingress_get(plane, host))[0] == 200 and r, within=30, what="a 200 through Traefik"
    )
    assert body.decode().startswith("hello-")

    def scaled_to_zero() -> bool:
        return not pods(plane, ns, "serving.knative.dev/service=hello")

    t = time.monotonic()
    wait_for(scaled_to_zero, within=120, what="scale to zero", interval=1)
    to_zero = time.monotonic() - t

    t = time.monotonic()
    status, body = ingress_get(plane, host, timeout=60)
    cold = time.monotonic() - t
    assert status == 200 and body.decode().startswith("hello-"), (status, body)
    print(f"scale to zero {to_zero:.1f}s, cold request through the activator {cold:.2f}s")


def test_traefik_manifest_grants_traefiks_documented_rbac() -> None:
    """hack/traefik-knative.yaml, which users apply, keeps the RBAC Traefik documents for its Knative
    provider in the pinned module: no more, no less."""
    upstream_file = default_cache_dir() / "traefik-knative-rbac.yml"
    if not upstream_file.is_file():
        pytest.fail(f"{upstream_file} is missing; run `make control-plane`", pytrace=False)
    ours = {d["kind"]: d for d in yaml.safe_load_all(TRAEFIK_MANIFEST.read_text()) if d}
    upstream = {d["kind"]: d for d in yaml.safe_load_all(upstream_file.read_text()) if d}
    assert ours["ClusterRole"]["rules"] == upstream["ClusterRole"]["rules"]
    assert ours["ClusterRoleBinding"]["roleRef"] == upstream["ClusterRoleBinding"]["roleRef"]
    (subject,) = ours["ClusterRoleBinding"]["subjects"]
    (theirs,) = upstream["ClusterRoleBinding"]["subjects"]
    assert subject["name"] == theirs["name"] == ours["ServiceAccount"]["metadata"]["name"]
    assert subject["namespace"] == ours["Deployment"]["metadata"]["namespace"] == TRAEFIK_NAMESPACE
