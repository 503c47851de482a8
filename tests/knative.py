"""Knative Serving's own components on the test node, with CoreDNS for cluster DNS and Traefik's Knative
provider as the networking layer: the serverless path a ModelService takes, from `kubectl apply` to an
answer through the activator and back to zero.

Everything comes from the pinned Go modules (hack/build-control-plane.sh) as local images
(hack/build-images.sh): Knative's release manifests from the serving module's config/core, with its
`ko://` image references rewritten to the local images; the networking CRDs and config-network from
knative.dev/networking and the images CRD from knative.dev/caching (the serving module's zip drops its
symlinks to them); Traefik from hack/traefik-knative.yaml, the file users apply.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from controlplane import ControlPlane, default_cache_dir
from node import CLUSTER_DNS_IP, Images
from pods import RESTRICTED, rollout

KNATIVE_NAMESPACE = "knative-serving"
TRAEFIK_NAMESPACE = "traefik"
TRAEFIK_MANIFEST = Path(__file__).resolve().parent.parent / "hack" / "traefik-knative.yaml"
INGRESS_CLASS = "traefik.ingress.networking.knative.dev"
DOMAIN = "example.com"
COMPONENTS = ("controller", "webhook", "autoscaler", "activator")
# The shortest windows Knative accepts, so scale to zero takes seconds, not minutes, in tests.
TEST_AUTOSCALER = {
    "stable-window": "6s",
    "scale-to-zero-grace-period": "6s",
    "scale-to-zero-pod-retention-period": "0s",
}


class KnativeError(RuntimeError):
    """Knative could not be installed or did not become ready."""


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def serving_manifests(cache_dir: Path, images: Images, autoscaler: dict[str, str]) -> list[dict[str, Any]]:
    """Knative Serving's core release manifests, ready for this node."""
    core = cache_dir / "knative-serving-core"
    networking = cache_dir / "knative-networking-config"
    caching = cache_dir / "knative-caching-config"
    for d in (core, networking, caching):
        if not d.is_dir():
            raise KnativeError(f"{d} is missing; run `make control-plane` (hack/build-control-plane.sh)")
    files = sorted(p for p in core.rglob("*.yaml") if not p.name.endswith("-hpa.yaml"))
    # The HPAs and disruption budgets in *-hpa.yaml scale the activator and webhook across nodes; with
    # one node and no metrics server they would only sit there.
    files += [networking / f for f in ("certificate.yaml", "domain-claim.yaml", "ingress.yaml")]
    files += [
        networking / "serverlessservice.yaml",
        networking / "config-network.yaml",
        caching / "image.yaml",
    ]
    docs = [d for f in files for d in _docs(f)]
    settings = {
        "config-network": {"ingress-class": INGRESS_CLASS},
        "config-domain": {DOMAIN: ""},
        "config-deployment": {
            "queue-sidecar-image": images.ref("knative-queue"),
            # Local images are never looked up in a registry (kind.local is in Knative's default list,
            # but the default is replaced, not extended, by a value).
            "registries-skipping-tag-resolving": "kind.local,ko.local,dev.local",
        },
        "config-autoscaler": autoscaler,
    }
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in settings:
            doc.setdefault("data", {}).update(settings[doc["metadata"]["name"]])
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"].startswith("ko://"):
                    name = container["image"].rsplit("/", 1)[1]
                    container["image"] = images.ref(f"knative-{name}")
                    container["imagePullPolicy"] = "Never"
    return docs


def coredns_manifests(images: Images) -> list[dict[str, Any]]:
    """Cluster DNS that answers cluster.local and nothing else: no `forward`, so no name ever leaves the
    machine. It listens on 1053, so it needs no capability; the Service maps 53 to it."""
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    corefile = (
        ".:1053 {\n"
        "    errors\n"
        "    health :8080\n"
        "    ready :8181\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "    }\n"
        "    cache 5\n"
        "}\n"
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "zeroserve-test:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "zeroserve-test:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "zeroserve-test:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": ns},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        # CoreDNS must not resolve through itself.
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": images.ref("coredns"),
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 1,
                                },
                                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                "securityContext": {**RESTRICTED, "runAsUser": 65532},
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
            "spec": {
                "clusterIP": CLUSTER_DNS_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]


def traefik_manifests(images: Images) -> list[dict[str, Any]]:
    """hack/traefik-knative.yaml, which users apply as it is, with the locally built Traefik image."""
    docs = _docs(TRAEFIK_MANIFEST)
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = images.ref("traefik")
                container["imagePullPolicy"] = "Never"
    return docs


def apply(plane: ControlPlane, docs: list[dict[str, Any]]) -> None:
    plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input="\n---\n".join(map(json.dumps, docs))
    )


def wait_available(plane: ControlPlane, namespace: str, deployments: list[str], timeout: float) -> None:
    for name in deployments:
        try:
            rollout(plane, namespace, name, timeout)
        except AssertionError as e:
            raise KnativeError(str(e)) from None


def install(
    plane: ControlPlane, autoscaler: dict[str, str] | None = None, timeout: float = 180
) -> dict[str, float]:
    """CoreDNS, Knative Serving and Traefik on the node, each waited for; returns seconds per part."""
    images = plane.images
    if images is None or plane.node is None:
        raise KnativeError("Knative needs a cluster with a node (ControlPlane(images=...))")
    cache_dir = default_cache_dir()
    timings = {}
    t = time.monotonic()
    apply(plane, coredns_manifests(images))
    # CRDs first: the Deployments' webhook configurations and config maps refer to them.
    serving = serving_manifests(cache_dir, images, autoscaler if autoscaler is not None else TEST_AUTOSCALER)
    crds = [d for d in serving if d["kind"] == "CustomResourceDefinition"]
    apply(plane, crds)
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{d['metadata']['name']}" for d in crds),
    )
    apply(plane, [d for d in serving if d["kind"] != "CustomResourceDefinition"])
    apply(plane, traefik_manifests(images))
    wait_available(plane, "kube-system", ["coredns"], timeout)
    timings["coredns"] = time.monotonic() - t
    wait_available(plane, KNATIVE_NAMESPACE, list(COMPONENTS), timeout)
    timings["knative"] = time.monotonic() - t
    wait_available(plane, TRAEFIK_NAMESPACE, ["traefik"], timeout)
    timings["traefik"] = time.monotonic() - t
    return timings


def set_features(plane: ControlPlane, **flags: str) -> None:
    """Knative's config-features flags, e.g. set_features(plane, nodeselector="enabled") for
    kubernetes.podspec-nodeselector (its webhook picks the change up within seconds)."""
    data = {f"kubernetes.podspec-{flag.replace('_', '-')}": value for flag, value in flags.items()}
    plane.kubectl(
        "patch",
        "configmap",
        "config-features",
        "-n",
        KNATIVE_NAMESPACE,
        "--type=merge",
        "-p",
        json.dumps({"data": data}),
    )
