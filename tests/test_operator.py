"""The operator, as a real process, against the real control plane. Knative's controllers do not run here,
so tests write the Knative Service status the way Knative's controller would."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import Binaries, ControlPlane
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from kubernetes_asyncio.client.exceptions import ApiException
from operatorproc import OperatorProcess
from waiting import eventually
from zeroserve_operator import api

ROOT = Path(__file__).resolve().parent.parent
CPU_EXAMPLE = ROOT / "examples" / "modelservice-cpu.yaml"
GPU_EXAMPLE = ROOT / "examples" / "modelservice-gpu.yaml"
MS = (api.GROUP, api.VERSION)
KSVC = ("serving.knative.dev", "v1")
MERGE_PATCH = "application/merge-patch+json"
FAST_RETRY = {"ZEROSERVE_OPERATOR_RETRY_DELAY": "1"}


@pytest.fixture
def operator(
    control_plane: ControlPlane, modelservice_crd: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(control_plane, tmp_path / "operator.log", [namespace], env=FAST_RETRY)
    with proc:
        yield proc
    print(proc.tail())  # shown by pytest when the test fails


class Cluster:
    def __init__(self, api_client: aclient.ApiClient, namespace: str) -> None:
        self.custom = aclient.CustomObjectsApi(api_client)
        self.core = aclient.CoreV1Api(api_client)
        self.ns = namespace

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.custom.create_namespaced_custom_object(*MS, self.ns, api.PLURAL, body)

    async def ms(self, name: str) -> dict[str, Any]:
        return await self.custom.get_namespaced_custom_object(*MS, self.ns, api.PLURAL, name)

    async def patch_ms(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.custom.patch_namespaced_custom_object(
            *MS, self.ns, api.PLURAL, name, patch, _content_type=MERGE_PATCH
        )

    async def ksvc(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.custom.get_namespaced_custom_object(*KSVC, self.ns, "services", name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def ksvcs(self) -> list[dict[str, Any]]:
        return (await self.custom.list_namespaced_custom_object(*KSVC, self.ns, "services"))["items"]

    async def condition(self, name: str, type_: str = "Ready") -> dict[str, Any] | None:
        status = (await self.ms(name)).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)

    async def knative_reports(self, name: str, ready: bool, url: str | None = None) -> None:
        """Write the ksvc status as Knative's controller does once the revision is (not) ready."""
        ksvc = await self.ksvc(name)
        assert ksvc is not None
        status: dict[str, Any] = {
            "observedGeneration": ksvc["metadata"]["generation"],
            "conditions": [
                {"type": t, "status": "True" if ready else "False"}
                | ({} if ready else {"reason": "RevisionMissing", "message": "Revision failed: image pull"})
                for t in ("ConfigurationsReady", "Ready", "RoutesReady")
            ],
            "latestCreatedRevisionName": f"{name}-00001",
        }
        if ready:
            status |= {
                "url": url or f"http://{name}.{self.ns}.example.com",
                "address": {"url": f"http://{name}.{self.ns}.svc.cluster.local"},
                "latestReadyRevisionName": f"{name}-00001",
                "traffic": [{"revisionName": f"{name}-00001", "latestRevision": True, "percent": 100}],
            }
        await self.custom.patch_namespaced_custom_object_status(
            *KSVC, self.ns, "services", name, {"status": status}, _content_type=MERGE_PATCH
        )


@pytest.fixture
async def cluster(api_client: aclient.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


def example(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


async def converged(cluster: Cluster, name: str) -> dict[str, Any] | None:
    ms = await cluster.ms(name)
    status = ms.get("status") or {}
    return ms if status.get("observedGeneration") == ms["metadata"]["generation"] else None


async def test_applied_example_gets_its_knative_service(
    operator: OperatorProcess, cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", str(CPU_EXAMPLE))

    ksvc = await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")

    template = ksvc["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/max-scale"] == "10"
    assert annotations["autoscaling.knative.dev/target"] == "8"
    assert template["spec"]["containerConcurrency"] == 16
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ZEROSERVE_MODEL_URI"] == "s3://my-models/vision/efficientnet-lite0.onnx"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ms = await cluster.ms("efficientnet")
    assert ksvc["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"]

    ms = await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="status")
    ready = await cluster.condition("efficientnet")
    assert ready is not None and ready["status"] == "Unknown" and ready["reason"] == "Reconciling"
    assert ms["status"]["device"] == "cpu"


async def test_ready_knative_service_makes_the_modelservice_ready(
    operator: OperatorProcess, cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", str(CPU_EXAMPLE))
    await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")

    await cluster.knative_reports("efficientnet", ready=False)

    async def reason() -> str | None:
        c = await cluster.condition("efficientnet")
        return c["reason"] if c and c["status"] == "False" else None

    assert await eventually(reason, within=30, what="Ready=False") == "RevisionMissing"
    service = await cluster.condition("efficientnet", "ServiceReady")
    assert service is not None and "image pull" in service["message"]

    await cluster.knative_reports("efficientnet", ready=True)

    async def ready() -> bool:
        c = await cluster.condition("efficientnet")
        return bool(c and c["status"] == "True")

    await eventually(ready, within=30, what="Ready=True")
    status = (await cluster.ms("efficientnet"))["status"]
    assert status["url"] == f"http://efficientnet.{namespace}.example.com"
    assert status["latestReadyRevision"] == "efficientnet-00001"
    assert "Serving at" in status["message"]

    table = control_plane.kubectl("get", "modelservices", "-n", namespace).stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == [
        "NAME",
        "URL",
        "READY",
        "RUNTIME",
        "DEVICE",
        "MIN",
        "MAX",
        "AGE",
    ]
    row = re.split(r"\s{2,}", table[1].strip())
    assert row[:7] == ["efficientnet", status["url"], "True", "onnx", "cpu", "0", "10"]
    wide = control_plane.kubectl("get", "ms", "-n", namespace, "-o", "wide").stdout
    assert "REASON" in wide.splitlines()[0]


async def test_spec_change_is_followed_and_removed_fields_are_removed(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    body = example(CPU_EXAMPLE)
    await cluster.create(body)
    await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="first reconcile")

    await cluster.patch_ms("efficientnet", {"spec": {"scaling": {"maxReplicas": 3, "window": "90s"}}})

    async def followed() -> dict[str, Any] | None:
        ksvc = await cluster.ksvc("efficientnet")
        ann = ksvc["spec"]["template"]["metadata"]["annotations"] if ksvc else {}
        return ksvc if ann.get("autoscaling.knative.dev/max-scale") == "3" else None

    ksvc = await eventually(followed, within=30, what="max-scale to follow the spec")
    assert ksvc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/window"] == "90s"
    ms = await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="observedGeneration")
    assert ms["metadata"]["generation"] == 2

    # A merge patch with null removes the field from the ModelService; the annotation must go too.
    await cluster.patch_ms("efficientnet", {"spec": {"scaling": {"maxReplicas": None}}})

    async def removed() -> bool:
        ksvc = await cluster.ksvc("efficientnet")
        return "autoscaling.knative.dev/max-scale" not in ksvc["spec"]["template"]["metadata"]["annotations"]

    await eventually(removed, within=30, what="max-scale to be removed")
    await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="observedGeneration 3")


async def test_knative_defaults_cause_no_update_loop(operator: OperatorProcess, cluster: Cluster) -> None:
    await cluster.create(example(CPU_EXAMPLE))
    await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="first reconcile")
    ksvc = await cluster.ksvc("efficientnet")
    assert ksvc is not None

    # What Knative's webhook adds to a Service: defaults in the template and a traffic block.
    defaulted = copy.deepcopy(ksvc)
    container = defaulted["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = container.get("resources") or {}
    container["readinessProbe"]["successThreshold"] = 1
    container["ports"][0]["protocol"] = "TCP"
    defaulted["spec"]["template"]["spec"]["enableServiceLinks"] = False
    defaulted["spec"]["traffic"] = [{"latestRevision": True, "percent": 100}]
    defaulted["metadata"].setdefault("annotations", {})["serving.knative.dev/creator"] = "system:admin"
    for key in ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"):
        defaulted["metadata"].pop(key, None)
    replaced = await cluster.custom.replace_namespaced_custom_object(
        *KSVC,
        cluster.ns,
        "services",
        "efficientnet",
        defaulted
        | {"metadata": defaulted["metadata"] | {"resourceVersion": ksvc["metadata"]["resourceVersion"]}},
    )
    await cluster.knative_reports("efficientnet", ready=True)
    await eventually(lambda: _ready(cluster, "efficientnet"), within=30, what="Ready")
    settled = await cluster.ksvc("efficientnet")
    assert settled is not None and settled["metadata"]["generation"] == replaced["metadata"]["generation"]

    await asyncio.sleep(3)  # room for a loop to show itself
    after = await cluster.ksvc("efficientnet")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
    assert after["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert operator.log().count("Updating Knative Service") == 0


async def _ready(cluster: Cluster, name: str) -> bool:
    c = await cluster.condition(name)
    return bool(c and c["status"] == "True")


async def test_deleting_the_modelservice_garbage_collects_the_knative_service(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    await cluster.create(example(CPU_EXAMPLE))
    await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")

    await cluster.custom.delete_namespaced_custom_object(*MS, cluster.ns, api.PLURAL, "efficientnet")

    async def gone() -> bool:
        return await cluster.ksvc("efficientnet") is None

    # The garbage collector notices a new CRD's objects on its discovery resync, up to 30s after install.
    await eventually(gone, within=90, what="the garbage collector to delete the Knative Service")


async def test_knative_service_deleted_by_hand_is_recreated(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    await cluster.create(example(CPU_EXAMPLE))
    first = await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")

    await cluster.custom.delete_namespaced_custom_object(*KSVC, cluster.ns, "services", "efficientnet")

    async def recreated() -> dict[str, Any] | None:
        ksvc = await cluster.ksvc("efficientnet")
        return ksvc if ksvc and ksvc["metadata"]["uid"] != first["metadata"]["uid"] else None

    await eventually(recreated, within=30, what="the Knative Service to be recreated")


async def test_disabled_knative_features_are_named_in_a_condition(
    operator: OperatorProcess, cluster: Cluster, api_client: aclient.ApiClient
) -> None:
    core = aclient.CoreV1Api(api_client)
    try:
        await core.create_namespace(
            aclient.V1Namespace(metadata=aclient.V1ObjectMeta(name="knative-serving"))
        )
    except ApiException as e:
        assert e.status == 409
    features = aclient.V1ConfigMap(
        metadata=aclient.V1ObjectMeta(name="config-features"),
        data={"kubernetes.podspec-tolerations": "enabled"},
    )
    await core.create_namespaced_config_map("knative-serving", features)
    try:
        await cluster.create(example(GPU_EXAMPLE))

        async def features_condition() -> dict[str, Any] | None:
            c = await cluster.condition("minilm-gpu", "KnativeFeaturesEnabled")
            return c if c and c["status"] == "False" else None

        cond = await eventually(features_condition, within=30, what="KnativeFeaturesEnabled=False")
        # The GPU example is Triton, fed by an init container: that flag is named too.
        assert "kubernetes.podspec-nodeselector" in cond["message"]
        assert "kubernetes.podspec-init-containers" in cond["message"]
        assert "kubernetes.podspec-tolerations" not in cond["message"]
        assert "config-features" in cond["message"]
        ready = await cluster.condition("minilm-gpu")
        assert ready is not None and ready["status"] == "False" and ready["reason"] == "FeatureDisabled"
        assert await cluster.ksvc("minilm-gpu") is None  # Knative's webhook would refuse it

        # The admin turns the flag on: the operator's retry picks it up, no spec change needed.
        await core.patch_namespaced_config_map(
            "config-features",
            "knative-serving",
            {
                "data": {
                    "kubernetes.podspec-nodeselector": "enabled",
                    "kubernetes.podspec-init-containers": "enabled",
                }
            },
        )
        ksvc = await eventually(lambda: cluster.ksvc("minilm-gpu"), within=30, what="the GPU Knative Service")
        assert ksvc["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}

        # observedGeneration was already current while blocked, so wait for the condition itself.
        async def features_on() -> bool:
            c = await cluster.condition("minilm-gpu", "KnativeFeaturesEnabled")
            return bool(c and c["status"] == "True")

        await eventually(features_on, within=30, what="KnativeFeaturesEnabled=True")
        assert (await cluster.ms("minilm-gpu"))["status"]["device"] == "gpu"
    finally:
        await core.delete_namespaced_config_map("config-features", "knative-serving")


async def test_knative_service_of_someone_else_is_not_taken_over(
    operator: OperatorProcess, cluster: Cluster
) -> None:
    foreign = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "efficientnet"},
        "spec": {"template": {"spec": {"containers": [{"image": "someone/else:1"}]}}},
    }
    await cluster.custom.create_namespaced_custom_object(*KSVC, cluster.ns, "services", foreign)

    await cluster.create(example(CPU_EXAMPLE))

    async def refused() -> dict[str, Any] | None:
        c = await cluster.condition("efficientnet")
        return c if c and c["reason"] == "KnativeServiceConflict" else None

    cond = await eventually(refused, within=30, what="a KnativeServiceConflict condition")
    assert cond["status"] == "False" and "already exists" in cond["message"]
    ksvc = await cluster.ksvc("efficientnet")
    assert ksvc is not None and ksvc["spec"]["template"]["spec"]["containers"][0]["image"] == "someone/else:1"


@pytest.fixture
def quick_health(
    control_plane: ControlPlane, modelservice_crd: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    env = {**FAST_RETRY, "ZEROSERVE_OPERATOR_HEALTH_INTERVAL": "1"}
    with OperatorProcess(control_plane, tmp_path / "operator.log", [namespace], env=env) as proc:
        yield proc
    print(proc.tail())


async def test_a_crash_looping_runtime_is_reported_by_the_health_sweep(
    quick_health: OperatorProcess, cluster: Cluster
) -> None:
    """Nothing Knative reconciles on changes while a runtime crash-loops: the operator's periodic sweep of
    the ModelServices' pods (one list, not a timer per ModelService) finds it and says why."""
    body = example(CPU_EXAMPLE)
    name = body["metadata"]["name"]
    await cluster.create(body)
    await eventually(lambda: converged(cluster, name), within=30, what="first reconcile")
    # Knative's controllers do not run here: the revision's pod is written as the kubelet would report
    # a runtime that exits 1, with its termination message; and a healthy pod of another ModelService.
    for pod_name, model, crash in (
        ("effnet-00001-deployment-a", name, True),
        ("other-00001-deployment-b", "other", False),
    ):
        await cluster.core.create_namespaced_pod(
            cluster.ns,
            {
                "metadata": {"name": pod_name, "labels": {"zeroserve.dev/modelservice": model}},
                "spec": {"containers": [{"name": "runtime", "image": "kind.local/zeroserve/runtime:test"}]},
            },
        )
        state = (
            {
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {
                    "terminated": {"exitCode": 1, "message": "model: sha256 mismatch: refusing to serve it"}
                },
                "restartCount": 2,
            }
            if crash
            else {"state": {"running": {"startedAt": "2026-12-07T00:00:00Z"}}, "restartCount": 0}
        )
        status = {
            "phase": "Running",
            "containerStatuses": [
                {"name": "runtime", "image": "x", "imageID": "", "ready": False, **state},
            ],
        }
        await cluster.core.patch_namespaced_pod_status(pod_name, cluster.ns, {"status": status})

    async def reported() -> dict[str, Any] | None:
        ready = await cluster.condition(name)
        return ready if ready and ready.get("reason") == "RuntimeFailed" else None

    ready = await eventually(reported, within=20, what="RuntimeFailed from the sweep")
    assert "refusing to serve it" in ready["message"] and "exited with code 1" in ready["message"], ready
    assert ready["status"] == "False"

    # Said as an Event too, as kopf's handlers say it, though the sweep runs outside them.
    async def posted() -> list[Any]:
        events = await cluster.core.list_namespaced_event(cluster.ns, field_selector="reason=RuntimeFailed")
        return [e for e in events.items if e.involved_object.name == name]

    (event,) = await eventually(posted, within=10, what="a RuntimeFailed event")
    assert event.type == "Warning" and "refusing to serve it" in event.message
    assert event.involved_object.kind == api.KIND and event.source.component == "kopf"


async def test_events_and_metrics(operator: OperatorProcess, cluster: Cluster) -> None:
    await cluster.create(example(CPU_EXAMPLE))
    await eventually(lambda: converged(cluster, "efficientnet"), within=30, what="first reconcile")

    async def events() -> dict[str, str]:
        found = await cluster.core.list_namespaced_event(
            cluster.ns, field_selector="involvedObject.name=efficientnet,involvedObject.kind=ModelService"
        )
        return {e.reason: e.message for e in found.items}

    seen = await eventually(events, within=30, what="an Event on the ModelService")
    assert seen["KnativeServiceCreated"] == f"Created Knative Service {cluster.ns}/efficientnet"

    await cluster.knative_reports("efficientnet", ready=True)

    async def ready_event() -> dict[str, str] | None:
        seen = await events()
        return seen if "Ready" in seen else None

    seen = await eventually(ready_event, within=30, what="a Ready Event")
    assert seen["Ready"].startswith("Serving at http://efficientnet.")

    text = operator.metrics()
    assert re.search(r'^zeroserve_operator_reconciles_total\{result="success"\} [1-9]', text, re.M), text
    assert re.search(r"^zeroserve_operator_reconcile_duration_seconds_count [1-9]", text, re.M)
    assert re.search(r'^zeroserve_operator_modelservices\{ready="true"\} 1\.0$', text, re.M), text


async def test_kopf_run_works_too(
    control_plane: ControlPlane, modelservice_crd: str, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    import sys

    kopf = str(Path(sys.executable).parent / "kopf")
    proc = OperatorProcess(control_plane, tmp_path / "kopf.log", [namespace])
    proc.argv = [kopf, "run", "--standalone", "-n", namespace, "-m", "zeroserve_operator.handlers"]
    proc.start()
    try:
        await cluster.create(example(CPU_EXAMPLE))
        await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")
    finally:
        proc.stop()


async def test_operator_killed_mid_reconcile_converges_after_restart(
    control_plane: ControlPlane, modelservice_crd: str, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    count = 20
    proc = OperatorProcess(control_plane, tmp_path / "operator.log", [namespace], env=FAST_RETRY).start()
    try:
        base = example(CPU_EXAMPLE)
        for i in range(count):
            await cluster.create(base | {"metadata": {"name": f"model-{i}"}})

        async def some_ksvcs() -> bool:
            return len(await cluster.ksvcs()) >= 3

        await eventually(some_ksvcs, within=30, interval=0.05, what="the first Knative Services")
        proc.kill()
        # While it is down, specs change: the restarted operator must catch up, not keep stale status.
        for i in range(0, count, 2):
            await cluster.patch_ms(f"model-{i}", {"spec": {"scaling": {"maxReplicas": 4}}})
        proc.start()

        async def all_converged() -> bool:
            for i in range(count):
                if not await converged(cluster, f"model-{i}"):
                    return False
            return True

        await eventually(all_converged, within=60, what="every ModelService to converge")
        ksvcs = await cluster.ksvcs()
        assert sorted(k["metadata"]["name"] for k in ksvcs) == sorted(f"model-{i}" for i in range(count))
        for k in ksvcs:
            i = int(k["metadata"]["name"].split("-")[1])
            want = "4" if i % 2 == 0 else "10"
            assert (
                k["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] == want
            )
            assert len(k["metadata"]["ownerReferences"]) == 1
    finally:
        proc.stop()
        print(proc.tail())


@pytest.fixture
async def bare_plane(binaries: Binaries, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A second control plane without Knative, as on a cluster where it is not installed yet."""
    plane = ControlPlane(binaries, tmp_path / "bare", install_knative=False)
    plane.start()
    try:
        from zeroserve_operator import crd

        plane.apply_crds([crd.CRD_FILE])
        yield plane
    finally:
        plane.stop()


async def test_missing_knative_gets_a_condition_and_converges_once_installed(
    bare_plane: ControlPlane, tmp_path: Path
) -> None:
    api_client = await aconfig.new_client_from_config(config_file=str(bare_plane.kubeconfig))
    async with api_client:
        cluster = Cluster(api_client, "default")
        with OperatorProcess(bare_plane, tmp_path / "operator.log", ["default"], env=FAST_RETRY) as proc:
            try:
                await cluster.create(example(CPU_EXAMPLE))

                async def missing() -> dict[str, Any] | None:
                    c = await cluster.condition("efficientnet")
                    return c if c and c["reason"] == "KnativeNotInstalled" else None

                cond = await eventually(missing, within=30, what="a KnativeNotInstalled condition")
                assert cond["status"] == "False" and "Install Knative Serving" in cond["message"]

                bare_plane.install_knative_crds()
                await eventually(lambda: cluster.ksvc("efficientnet"), within=30, what="the Knative Service")
            finally:
                print(proc.tail())
