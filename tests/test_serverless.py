"""The serverless path end to end, on real parts only: the operator (a pod from the chart) turns a
ModelService into a Knative Service; Knative's own controller, webhook, autoscaler, activator and
queue-proxy run it; Traefik's Knative provider routes to it. It answers tritonclient through the ingress,
scales to zero, and answers cold through the activator."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from controlplane import ControlPlane
from knative import TRAEFIK_NAMESPACE
from modelhost import SHARED_MODELS, serve_models, sha256_of
from pods import apply, pods, service_address, wait_for
from release import install_operator, uninstall

MODEL = SHARED_MODELS / "efficientnet-lite0.onnx"
OPERATOR_NAMESPACE = "zeroserve-system"


@pytest.fixture(scope="module")
def operator(knative_cluster: ControlPlane) -> Iterator[str]:
    """The operator, installed from the chart as a user would, watching every namespace."""
    deployment = install_operator(knative_cluster, "zeroserve", OPERATOR_NAMESPACE)
    yield deployment
    uninstall(knative_cluster, "zeroserve", OPERATOR_NAMESPACE)


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    with serve_models(SHARED_MODELS) as base:
        yield f"{base}/{MODEL.name}"


@pytest.fixture
def ns(knative_cluster: ControlPlane) -> Iterator[str]:
    name = f"ms-{uuid.uuid4().hex[:8]}"
    knative_cluster.kubectl("create", "namespace", name)
    yield name
    knative_cluster.kubectl("delete", "namespace", name, "--wait=false")


def modelservice(name: str, model_url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model_url, "sha256": sha256_of(MODEL), **spec.pop("model", {})},
            "resources": {"memory": "1Gi"},
            **spec,
        },
    }


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def modelservice_ready(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    ms = plane.get_json("modelservice", name, "-n", ns)
    return ms if conditions(ms).get("Ready", {}).get("status") == "True" else None


class Ingress:
    """Requests through Traefik's public entrypoint, addressed by Host as a client outside would."""

    def __init__(self, plane: ControlPlane) -> None:
        self.address = service_address(plane, TRAEFIK_NAMESPACE, "traefik")

    def post(
        self, host: str, path: str, body: bytes, timeout: float = 60
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"http://{self.address}{path}", body, headers={"Host": host, "Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def infer_body(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def test_modelservice_from_apply_to_answer_to_zero_and_cold_again(
    knative_cluster: ControlPlane, operator: str, ns: str, model_url: str
) -> None:
    plane = knative_cluster
    apply(plane, ns, [modelservice("effnet", model_url)])
    ms = wait_for(lambda: modelservice_ready(plane, ns, "effnet"), within=180, what="the ModelService Ready")

    # Ready from real Knative status: URL and conditions mirrored, columns in `kubectl get`.
    ksvc = plane.get_json("ksvc", "effnet", "-n", ns)
    assert ms["status"]["url"] == ksvc["status"]["url"]
    assert conditions(ms)["ServiceReady"]["status"] == "True"
    table = plane.kubectl("get", "modelservices", "-n", ns).stdout
    assert ksvc["status"]["url"] in table and "True" in table, table
    host = urlparse(ms["status"]["url"]).hostname
    assert host

    # tritonclient, binary HTTP, through the ingress and queue-proxy: what raw onnxruntime returns.
    ingress = Ingress(plane)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32)
    expected = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    client = httpclient.InferenceServerClient(f"{ingress.address}:80")
    try:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = client.infer(
            "effnet",
            [inp],
            outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)],
            headers={"Host": host},
        )
        np.testing.assert_allclose(out.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    finally:
        client.close()

    # After the scale-to-zero window: no replica at all.
    t = time.monotonic()
    wait_for(
        lambda: not pods(plane, ns, "serving.knative.dev/service=effnet"),
        within=180,
        what="zero replicas",
        interval=1,
    )
    to_zero = time.monotonic() - t

    # The next request is a cold start through the activator: it succeeds, and the runtime says so.
    t = time.monotonic()
    status, headers, body = ingress.post(host, "/v2/models/effnet/infer", infer_body(x))
    cold = time.monotonic() - t
    assert status == 200, body[:500]
    logits = np.array(json.loads(body)["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert headers.get("x-zeroserve-cold-start") == "1", headers
    print(f"to zero {to_zero:.1f}s, cold start through the activator {cold:.2f}s")
