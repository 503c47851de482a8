"""The serverless path end to end, on real parts only: the operator (a pod from the chart) turns a
ModelService into a Knative Service; Knative's own controller, webhook, autoscaler, activator and
queue-proxy run it; Traefik's Knative provider routes to it. It answers tritonclient through the ingress,
scales to zero, and answers cold through the activator."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import yaml
from controlplane import ControlPlane
from knative import DOMAIN, TRAEFIK_NAMESPACE, set_features
from modelhost import SHARED_MODELS, sha256_of
from pods import apply, node_model_cache, pods, run_python, service_address, wait_for
from release import OPERATOR_NAMESPACE
from zeroserve_operator.resources.knative import build_knative_service
from zeroserve_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parent.parent
MODEL = SHARED_MODELS / "efficientnet-lite0.onnx"


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
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
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

    # Kubernetes hears of the replica's readiness within a couple of the kubelet's 1 s probes of the
    # answer, not a 10 s probe period later (the API server's default for Knative's periodSeconds 0): the
    # autoscaler counts the revision active, and so lets it go to zero, only from then.
    (pod,) = pods(plane, ns, "serving.knative.dev/service=effnet")
    queue = next(c for c in pod["spec"]["containers"] if c["name"] == "queue-proxy")
    assert queue["readinessProbe"]["periodSeconds"] == 1, queue["readinessProbe"]
    t = time.monotonic()
    wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for p in pods(plane, ns, "serving.knative.dev/service=effnet")
            for c in p["status"].get("conditions") or []
        ),
        within=5,
        what="the cold replica's pod Ready",
        interval=0.2,
    )
    print(
        f"to zero {to_zero:.1f}s, cold start through the activator {cold:.2f}s, "
        f"pod Ready {time.monotonic() - t:.1f}s after the answer"
    )


ZEROSERVE = str(Path(sys.executable).parent / "zeroserve")


def bench_file(
    path: Path, ingress: Ingress, host: str, model: str, workload: dict[str, Any], **target: Any
) -> Path:
    """A `zeroserve bench` file aimed at a ModelService through the ingress, by its Host."""
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)
    doc = {
        "targets": [
            {
                "name": model,
                "kind": "oip-rest",
                "url": f"http://{ingress.address}",
                "model": model,
                "headers": {"Host": host},
                "timeout_s": 60,
                **target,
            }
        ],
        "payload": json.loads(infer_body(x)),
        "workload": workload,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def run_bench(bench: Path, out: Path, timeout: float = 300) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ZEROSERVE, "bench", str(bench), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished_report(proc: subprocess.Popen[str], out: Path, timeout: float = 300) -> dict[str, Any]:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-4000:]
    (target,) = json.loads((out / "report.json").read_text())["targets"]
    return target


def test_update_under_load_rolls_a_new_revision_without_a_failed_request(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str, tmp_path: Path
) -> None:
    plane = knative_cluster
    apply(plane, ns, [modelservice("rolling", model_url, scaling={"minReplicas": 1})])
    ms = wait_for(lambda: modelservice_ready(plane, ns, "rolling"), within=180, what="the ModelService Ready")
    first = plane.get_json("ksvc", "rolling", "-n", ns)["status"]["latestReadyRevisionName"]
    host = urlparse(ms["status"]["url"]).hostname
    bench = bench_file(
        tmp_path / "bench.yaml",
        Ingress(plane),
        str(host),
        "rolling",
        {"type": "constant", "rate": 8, "duration_s": 45, "seed": 1},
    )
    out = tmp_path / "out"
    proc = run_bench(bench, out)
    try:
        time.sleep(8)
        # A new batching setting: a new revision, rolled out while requests keep coming.
        plane.kubectl(
            "patch",
            "modelservice",
            "rolling",
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"runtime": {"batching": {"maxBatchSize": 4, "maxQueueDelayMs": 2}}}}),
        )

        def rolled() -> str | None:
            status = plane.get_json("ksvc", "rolling", "-n", ns).get("status", {})
            latest = status.get("latestReadyRevisionName")
            traffic = status.get("traffic") or [{}]
            return latest if latest != first and traffic[0].get("revisionName") == latest else None

        second = wait_for(rolled, within=120, what="the new revision to take all traffic")
        target = finished_report(proc, out)
    finally:
        proc.kill()
    assert target["requests"] >= 300 and target["successes"] == target["requests"], target["errors"]
    # The same bench's requests were answered by both revisions (the runtime names its revision): the
    # old one before the patch, the new one after it took the traffic, and the new one last.
    served = target["revisions"]
    assert set(served) == {first, second}, served
    assert served[first]["answers"] >= 10 and served[second]["answers"] >= 10, served
    assert served[first]["first_s"] < served[second]["first_s"] <= served[first]["last_s"] + 5, served
    assert served[second]["last_s"] > served[first]["last_s"], served
    revision = plane.get_json("revision", second, "-n", ns)
    env = {e["name"]: e.get("value") for e in revision["spec"]["containers"][0]["env"]}
    assert env["ZEROSERVE_MAX_BATCH_SIZE"] == "4"


def test_deleting_the_modelservice_removes_service_revisions_and_pods(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
) -> None:
    plane = knative_cluster
    apply(plane, ns, [modelservice("gone", model_url, scaling={"minReplicas": 1})])
    wait_for(lambda: modelservice_ready(plane, ns, "gone"), within=180, what="the ModelService Ready")
    assert plane.get_json("revisions", "-n", ns)["items"]
    plane.kubectl("delete", "modelservice", "gone", "-n", ns)

    def nothing_left() -> bool:
        left = [
            plane.get_json(kind, "-n", ns, "-l", "serving.knative.dev/service=gone")["items"]
            for kind in ("revisions", "deployments", "pods")
        ]
        return not any(left) and plane.kubectl("get", "ksvc", "gone", "-n", ns, check=False).returncode != 0

    wait_for(
        nothing_left, within=120, what="the Knative Service, its revisions and pods to be gone", interval=1
    )


def test_cluster_local_visibility_is_reachable_inside_and_not_through_the_ingress(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
) -> None:
    plane = knative_cluster
    apply(plane, ns, [modelservice("private", model_url, visibility="cluster-local")])
    ms = wait_for(lambda: modelservice_ready(plane, ns, "private"), within=180, what="the ModelService Ready")
    assert ms["status"]["url"] == f"http://private.{ns}.svc.cluster.local"

    # From outside, through the public entrypoint, by the name an external route would have: no route.
    status, _, _ = Ingress(plane).post(f"private.{ns}.{DOMAIN}", "/v2/models/private/infer", b"{}")
    assert status == 404

    # From a pod, by its cluster-local name, through cluster DNS and Traefik's private entrypoint.
    probe = (
        "import urllib.request\n"
        f"url = 'http://private.{ns}.svc.cluster.local/v2/models/private/ready'\n"
        "print(urllib.request.urlopen(url, timeout=60).status)\n"
    )
    phase, logs = run_python(plane, ns, "inside", probe)
    assert phase == "Succeeded" and logs.strip() == "200", logs


@pytest.mark.parametrize(
    ("problem", "expected"),
    [("sha256", "refusing to serve it"), ("404", "404")],
    ids=["wrong-sha256", "missing-model"],
)
def test_a_model_that_cannot_load_gives_the_runtimes_reason_in_a_condition(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str, problem: str, expected: str
) -> None:
    """Within seconds, not at Knative's progress deadline: the operator reads the crash-looping pod."""
    plane = knative_cluster
    if problem == "sha256":
        body = modelservice("broken", model_url, model={"sha256": "0" * 64})
    else:
        body = modelservice("broken", model_url.replace(MODEL.name, "no-such-model.onnx"))
    apply(plane, ns, [body])

    def failed() -> dict[str, Any] | None:
        ready = conditions(plane.get_json("modelservice", "broken", "-n", ns)).get("Ready", {})
        return ready if ready.get("status") == "False" else None

    ready = wait_for(failed, within=90, what="a Ready=False condition with the runtime's reason", interval=1)
    assert ready["reason"] == "RuntimeFailed" and expected in ready["message"], ready
    events = plane.kubectl("get", "events", "-n", ns, "--field-selector", "reason=RuntimeFailed").stdout
    assert "broken" in events, events


def cache_counters(plane: ControlPlane, ns: str, service: str) -> dict[str, float]:
    """The model-cache counters of the service's one live pod, from its /metrics through the API server."""
    (pod,) = [
        p
        for p in pods(plane, ns, f"serving.knative.dev/service={service}")
        if "deletionTimestamp" not in p["metadata"]
    ]
    name = pod["metadata"]["name"]
    text = plane.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}:8080/proxy/metrics").stdout
    return {
        kind: float(m[1])
        for kind in ("hits", "misses")
        if (m := re.search(rf"^zeroserve_model_cache_{kind}_total\{{[^}}]*\}} (\S+)$", text, re.M))
    }


def test_a_node_cache_claim_keeps_the_model_for_the_next_cold_start(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
) -> None:
    """spec.model.cache: the first replica downloads the model into the claim, and the cold start after
    scale to zero loads it from there without a download. A claim that does not exist is named in the
    ModelService's condition at once, not at Knative's progress deadline."""
    plane = knative_cluster
    set_features(plane, persistent_volume_claim="enabled", persistent_volume_write="enabled")
    try:
        apply(plane, ns, [modelservice("nocache", model_url, model={"cache": {"claimName": "absent"}})])

        def unschedulable() -> dict[str, Any] | None:
            ready = conditions(plane.get_json("modelservice", "nocache", "-n", ns)).get("Ready", {})
            return ready if ready.get("reason") == "Unschedulable" else None

        ready = wait_for(unschedulable, within=90, what="Ready=False, Unschedulable", interval=1)
        assert 'persistentvolumeclaim "absent" not found' in ready["message"], ready
        plane.kubectl("delete", "modelservice", "nocache", "-n", ns, "--wait=false")

        with node_model_cache(plane, ns) as (folder, cache):
            apply(plane, ns, [modelservice("cached", model_url, model={"cache": cache})])
            ms = wait_for(
                lambda: modelservice_ready(plane, ns, "cached"), within=180, what="the ModelService Ready"
            )
            kept = folder / "sha256" / sha256_of(MODEL) / MODEL.name
            assert kept.is_file() and sha256_of(kept) == sha256_of(MODEL), sorted(folder.rglob("*"))
            assert kept.stat().st_uid == 1000
            assert cache_counters(plane, ns, "cached") == {"hits": 0, "misses": 1}

            wait_for(
                lambda: not pods(plane, ns, "serving.knative.dev/service=cached"),
                within=180,
                what="zero replicas",
                interval=1,
            )
            x = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)
            status, headers, body = Ingress(plane).post(
                urlparse(ms["status"]["url"]).hostname or "", "/v2/models/cached/infer", infer_body(x)
            )
            assert status == 200, body[:500]
            assert headers.get("x-zeroserve-cold-start") == "1", headers
            assert cache_counters(plane, ns, "cached") == {"hits": 1, "misses": 0}
            plane.kubectl("delete", "modelservice", "--all", "-n", ns, "--wait=true")
    finally:
        set_features(plane, persistent_volume_claim="disabled", persistent_volume_write="disabled")


def dry_run(plane: ControlPlane, ns: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Server-side dry run: Knative's real admission webhooks judge the object; nothing is stored."""
    return plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({**obj, "metadata": {**obj["metadata"], "namespace": ns, "ownerReferences": []}}),
        check=False,
    )


def test_knatives_webhook_judges_the_operators_services(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
) -> None:
    """The CPU example and a GPU-shaped spec, built by the operator's pure builder, go through Knative's
    real validating webhook; with the config-features flags off the webhook refuses the GPU one, and the
    ModelService's condition names the flag to turn on."""
    plane = knative_cluster
    settings = OperatorSettings(onnx_image=plane.images.runtime)  # type: ignore[union-attr]
    example = yaml.safe_load((ROOT / "examples" / "modelservice-cpu.yaml").read_text())
    example["metadata"].update(namespace=ns, uid=str(uuid.uuid4()))
    gpu = modelservice(
        "gpu",
        model_url,
        resources={"memory": "1Gi", "gpu": {"count": 1}},
        nodeSelector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    gpu["metadata"].update(namespace=ns, uid=str(uuid.uuid4()))
    cpu_ksvc, gpu_ksvc = build_knative_service(example, settings), build_knative_service(gpu, settings)

    set_features(plane, nodeselector="disabled", tolerations="disabled")
    accepted = dry_run(plane, ns, cpu_ksvc)
    assert accepted.returncode == 0, accepted.stderr
    refused = dry_run(plane, ns, gpu_ksvc)
    assert refused.returncode != 0 and "nodeSelector" in refused.stderr, refused.stderr

    # The operator reads the same flags and says which to turn on, instead of sending a doomed object.
    apply(plane, ns, [gpu])

    def condition_names_the_flag() -> dict[str, Any] | None:
        ms = plane.get_json("modelservice", "gpu", "-n", ns)
        features = conditions(ms).get("KnativeFeaturesEnabled", {})
        return ms if features.get("status") == "False" else None

    ms = wait_for(condition_names_the_flag, within=60, what="KnativeFeaturesEnabled=False")
    message = conditions(ms)["KnativeFeaturesEnabled"]["message"]
    assert "kubernetes.podspec-nodeselector" in message and "kubernetes.podspec-tolerations" in message

    # The GPU example runs NVIDIA's Triton fed by an init container: Knative must take that pod too.
    triton_example = yaml.safe_load((ROOT / "examples" / "modelservice-gpu.yaml").read_text())
    triton_example["metadata"].update(namespace=ns, uid=str(uuid.uuid4()))
    triton_ksvc = build_knative_service(triton_example, settings)
    set_features(plane, nodeselector="enabled", tolerations="enabled")
    try:
        # Knative's webhook reads config-features through an informer: give it a moment.
        wait_for(
            lambda: dry_run(plane, ns, gpu_ksvc).returncode == 0, within=30, what="the webhook to accept"
        )
        refused = dry_run(plane, ns, triton_ksvc)
        assert refused.returncode != 0 and "initContainers" in refused.stderr, refused.stderr
        set_features(plane, init_containers="enabled")
        wait_for(
            lambda: dry_run(plane, ns, triton_ksvc).returncode == 0,
            within=30,
            what="the webhook to accept the Triton example",
        )
    finally:
        set_features(plane, nodeselector="disabled", tolerations="disabled", init_containers="disabled")


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@contextlib.contextmanager
def gpu_pool_face(plane: ControlPlane) -> Iterator[str]:
    """The test node dressed as a GPU node pool's node: two nvidia.com/gpu in its status (as the device
    plugin advertises it), the label and the taint such a pool has; all taken off again afterwards."""
    (node,) = plane.get_json("nodes")["items"]
    name = node["metadata"]["name"]
    taints = node["spec"].get("taints") or []
    gpu = json.dumps(
        {"status": {"capacity": {"nvidia.com/gpu": "2"}, "allocatable": {"nvidia.com/gpu": "2"}}}
    )
    plane.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", gpu)
    plane.kubectl("label", "node", name, "nvidia.com/gpu.present=true", "--overwrite")
    plane.kubectl(
        "patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": [*taints, GPU_TAINT]}})
    )
    try:
        yield name
    finally:
        plane.kubectl(
            "patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints or None}})
        )
        plane.kubectl("label", "node", name, "nvidia.com/gpu.present-")
        none = json.dumps(
            {"status": {"capacity": {"nvidia.com/gpu": None}, "allocatable": {"nvidia.com/gpu": None}}}
        )
        plane.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", none)


def test_a_gpu_modelservice_is_placed_on_the_gpu_pool_refuses_cpu_and_serves_when_allowed(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str
) -> None:
    """On real Knative and a node that looks like a GPU pool's: the GPU ModelService's pod is scheduled
    there (its nodeSelector, toleration and nvidia.com/gpu limit, the operator's defaults, met by the
    node); on a runtime image without CUDA it fails and says why, naming CUDA; allowed CPU, it serves
    and reports that each replica's provider is its own."""
    plane = knative_cluster
    image = plane.images.runtime  # type: ignore[union-attr]  # the CPU image: onnxruntime without CUDA
    set_features(plane, nodeselector="enabled", tolerations="enabled")
    try:
        with gpu_pool_face(plane) as node:
            gpu = {"count": 1}
            placement = {
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
            strict = modelservice(
                "gpu-strict",
                model_url,
                runtime={"image": image},
                resources={"memory": "1Gi", "gpu": gpu},
                **placement,
            )
            allowed = modelservice(
                "gpu-allowed",
                model_url,
                runtime={"image": image},
                resources={"memory": "1Gi", "gpu": {**gpu, "allowCpuFallback": True}},
                scaling={"minReplicas": 1},
                **placement,
            )
            apply(plane, ns, [strict, allowed])

            def failed() -> dict[str, Any] | None:
                ms = plane.get_json("modelservice", "gpu-strict", "-n", ns)
                ready = conditions(ms).get("Ready", {})
                return ms if ready.get("reason") == "RuntimeFailed" else None

            ms = wait_for(failed, within=180, what="gpu-strict RuntimeFailed")
            message = conditions(ms)["Ready"]["message"]
            assert "CUDAExecutionProvider" in message and "allowCpuFallback" in message, message
            served = wait_for(
                lambda: modelservice_ready(plane, ns, "gpu-allowed"), within=180, what="gpu-allowed Ready"
            )
            assert served["status"]["executionProvider"] == "PerReplica", served["status"]
            for name in ("gpu-strict", "gpu-allowed"):
                placed = pods(plane, ns, f"serving.knative.dev/service={name}")
                assert placed, name
                for pod in placed:
                    assert pod["spec"]["nodeName"] == node, pod["spec"].get("nodeName")
                    user = next(c for c in pod["spec"]["containers"] if c["name"] != "queue-proxy")
                    assert user["resources"]["limits"]["nvidia.com/gpu"] == "1", user["resources"]
            # The scheduler counted the GPUs the replicas hold against the node's, as on a real pool.
            allocated = re.search(
                r"nvidia\.com/gpu\s+(\d+)\s+(\d+)", plane.kubectl("describe", "node", node).stdout
            )
            assert allocated and int(allocated[1]) >= 1, allocated
            x = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)
            status, headers, body = Ingress(plane).post(
                urlparse(served["status"]["url"]).hostname or "",
                "/v2/models/gpu-allowed/infer",
                infer_body(x),
            )
            assert status == 200, body[:500]
            on_node = {
                p["metadata"]["name"] for p in pods(plane, ns, "serving.knative.dev/service=gpu-allowed")
            }
            assert headers["x-zeroserve-replica"] in on_node, (headers, on_node)
            plane.kubectl("delete", "modelservice", "--all", "-n", ns, "--wait=true")
    finally:
        set_features(plane, nodeselector="disabled", tolerations="disabled")


def operator_pod(plane: ControlPlane) -> dict[str, Any] | None:
    """The operator's one running, not terminating, pod."""
    found = [
        p
        for p in pods(plane, OPERATOR_NAMESPACE, "app.kubernetes.io/name=zeroserve")
        if not p["metadata"].get("deletionTimestamp")
    ]
    return found[0] if len(found) == 1 else None


def live(plane: ControlPlane, ns: str, service: str) -> list[dict[str, Any]]:
    """The service's pods that are not being deleted."""
    return [
        p
        for p in pods(plane, ns, f"serving.knative.dev/service={service}")
        if not p["metadata"].get("deletionTimestamp")
    ]


def test_operator_restarted_during_a_scale_up_loses_nothing_and_converges(
    knative_cluster: ControlPlane, chart_operator: str, ns: str, model_url: str, tmp_path: Path
) -> None:
    plane = knative_cluster
    # containerConcurrency 2: Knative's queue-proxy holds what the runtime is not yet working on.
    scaling = {"maxReplicas": 3, "target": 1, "containerConcurrency": 2}
    apply(plane, ns, [modelservice("restart", model_url, scaling=scaling)])
    ms = wait_for(lambda: modelservice_ready(plane, ns, "restart"), within=180, what="the ModelService Ready")
    # From zero: the requests the activator holds through the cold start panic the autoscaler into more
    # than one replica, which is the scale-up the operator is restarted in the middle of.
    wait_for(lambda: not live(plane, ns, "restart"), within=180, what="zero replicas", interval=1)
    host = urlparse(ms["status"]["url"]).hostname
    bench = bench_file(
        tmp_path / "bench.yaml",
        Ingress(plane),
        str(host),
        "restart",
        {"type": "constant", "rate": 8, "duration_s": 30, "seed": 2},
    )
    out = tmp_path / "out"
    before = operator_pod(plane)
    assert before is not None
    proc = run_bench(bench, out)
    try:

        def scaling_up() -> dict[str, Any] | None:
            items = plane.get_json("deployments", "-n", ns, "-l", "serving.knative.dev/service=restart")[
                "items"
            ]
            want = (items[0]["spec"].get("replicas") or 0) if items else 0
            ready = (items[0]["status"].get("readyReplicas") or 0) if items else 0
            return {"replicas": want, "ready": ready} if want >= 2 and ready < want else None

        during = wait_for(
            scaling_up, within=30, what="a scale-up in progress (more replicas asked than ready)"
        )
        plane.kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, before["metadata"]["name"], "--wait=false")
        target = finished_report(proc, out)
    finally:
        proc.kill()
    print(f"operator pod deleted with {during['ready']} of {during['replicas']} replicas ready")
    assert target["successes"] == target["requests"] > 200, target["errors"]
    # The scale-up went on without the operator: more than one replica answered the bench.
    assert len(target["answered_by"]) >= 2, target["answered_by"]
    # Its Deployment replaced the operator: a new pod, not the old one restarted, running and ready.
    after = wait_for(
        lambda: (
            (p := operator_pod(plane))
            and p["metadata"]["uid"] != before["metadata"]["uid"]
            and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
            )
            and p
        ),
        within=120,
        what="a new operator pod Ready",
    )
    assert after["metadata"]["name"] != before["metadata"]["name"]
    # After the restart there is still exactly one Knative Service, owned as before.
    ksvcs = plane.get_json("ksvc", "-n", ns, "-l", "zeroserve.dev/modelservice=restart")["items"]
    assert len(ksvcs) == 1
    assert ksvcs[0]["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"]
    # The new operator converges: a spec change after the restart is reconciled.
    plane.kubectl(
        "patch",
        "modelservice",
        "restart",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"scaling": {"maxReplicas": 2}}}),
    )

    def converged() -> bool:
        current = plane.get_json("modelservice", "restart", "-n", ns)
        annotations = plane.get_json("ksvc", "restart", "-n", ns)["spec"]["template"]["metadata"][
            "annotations"
        ]
        return (
            current["status"].get("observedGeneration") == current["metadata"]["generation"]
            and annotations.get("autoscaling.knative.dev/max-scale") == "2"
        )

    wait_for(converged, within=90, what="the restarted operator to reconcile a change")


def replica_counts_until_zero(plane: ControlPlane, ns: str, service: str, within: float) -> list[int]:
    """The service's live replica count each time it changes, from now until it is zero."""
    counts: list[int] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        n = len(live(plane, ns, service))
        if not counts or counts[-1] != n:
            counts.append(n)
        if n == 0:
            return counts
        time.sleep(0.3)
    raise AssertionError(f"{service} not at zero within {within:.0f} s: {counts}")


@pytest.mark.parametrize(
    "workload",
    [
        # Two bursts, each after a gap longer than scale to zero takes here (about 40 s): both start cold.
        {"type": "sporadic", "bursts": 2, "burst_rate": 8, "burst_s": 4, "idle_s": 55, "seed": 3},
        # The study's bursty traffic: calm, then bursts over one replica's target of 1 in flight.
        {"type": "mmpp", "rates": [1, 10], "mean_sojourn_s": [6, 4], "duration_s": 30, "seed": 4},
    ],
    ids=["sporadic", "mmpp"],
)
def test_bursts_through_scale_ups_all_succeed_and_the_report_counts_cold_starts_and_replicas(
    knative_cluster: ControlPlane,
    chart_operator: str,
    ns: str,
    model_url: str,
    tmp_path: Path,
    workload: dict[str, Any],
) -> None:
    plane = knative_cluster
    name = workload["type"]
    scaling = {"maxReplicas": 3, "target": 1, "containerConcurrency": 2}
    apply(plane, ns, [modelservice(name, model_url, scaling=scaling)])
    ms = wait_for(lambda: modelservice_ready(plane, ns, name), within=180, what="the ModelService Ready")
    # Start from zero: the first request of the run is a cold start through the activator.
    wait_for(
        lambda: not pods(plane, ns, f"serving.knative.dev/service={name}"),
        within=180,
        what="zero",
        interval=1,
    )
    bench = bench_file(
        tmp_path / "bench.yaml",
        Ingress(plane),
        str(urlparse(ms["status"]["url"]).hostname),
        name,
        workload,
        idle_window_s=45,
        replicas={
            "namespace": ns,
            "selector": f"serving.knative.dev/service={name}",
            "kubeconfig": str(plane.kubeconfig),
        },
    )
    out = tmp_path / "out"
    target = finished_report(run_bench(bench, out), out, timeout=400)
    assert target["requests"] > 20 and target["successes"] == target["requests"], target["errors"]
    bursts = workload.get("bursts", 1)
    # Every scale from zero was seen by the runtime as its process's first answer.
    assert target["cold_by_header"] >= bursts, target
    # Replicas over time, from the API: none at the start, at least one while serving.
    samples = target["replicas"]
    assert samples[0]["total"] == 0 and target["max_replicas"] >= 1, samples
    assert "replicas" in (out / "report.html").read_text()
    if name == "sporadic":
        # Each burst comes at zero, 8 requests a second against a target of 1 in flight: the requests the
        # activator holds through the cold start panic the autoscaler, which asks for more than one
        # replica. The extra ones are scheduled, become ready and answer part of the burst.
        assert target["max_replicas"] >= 2, samples
        assert (
            max(s.get("scheduled", s["total"]) for s in samples) >= 2
            and max(s["ready"] for s in samples) >= 2
        ), samples
        assert len(target["answered_by"]) >= 2, target["answered_by"]
        # Then back to one (the scale-down rate halves the ready replicas at most), and to zero.
        counts = replica_counts_until_zero(plane, ns, name, within=180)
        assert counts[-1] == 0 and 1 in counts, counts
        assert counts.index(1) > 0 and max(counts[: counts.index(1)]) >= 2, counts
