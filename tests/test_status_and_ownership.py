"""Pure helpers of the reconciler: status mirroring and the owned-field comparison."""

from __future__ import annotations

from typing import Any

import pytest
from zeroserve_operator.api import ModelServiceSpec
from zeroserve_operator.ownership import contains, owned_fields_match, stamp
from zeroserve_operator.resources import status

SPEC = ModelServiceSpec.model_validate({"model": {"uri": "s3://b/m.onnx"}})


def ksvc(generation: int = 1, observed: int | None = 1, ready: str | None = "True") -> dict[str, Any]:
    st: dict[str, Any] = {"observedGeneration": observed, "url": "http://m.ns.example.com"}
    if ready is not None:
        st["conditions"] = [
            {"type": "Ready", "status": ready, "reason": None if ready == "True" else "Failed"}
        ]
        st["latestReadyRevisionName"] = "m-00001"
    return {"metadata": {"generation": generation}, "status": st}


def by_type(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st["conditions"]}


def test_ready_knative_service_makes_everything_ready() -> None:
    st = status.observed_status(SPEC, 3, ksvc(), None)
    c = by_type(st)
    assert (c["Ready"]["status"], c["ServiceReady"]["status"], c["SpecValid"]["status"]) == ("True",) * 3
    assert st["url"] == "http://m.ns.example.com" and st["latestReadyRevision"] == "m-00001"
    assert st["observedGeneration"] == 3 and st["device"] == "cpu"
    assert c["Ready"]["observedGeneration"] == 3


def test_status_of_an_older_knative_generation_is_not_trusted() -> None:
    st = status.observed_status(SPEC, 2, ksvc(generation=2, observed=1), None)
    assert by_type(st)["Ready"]["status"] == "Unknown"
    assert by_type(st)["Ready"]["reason"] == "Reconciling"


def test_failed_knative_service_carries_its_reason() -> None:
    st = status.observed_status(SPEC, 1, ksvc(ready="False"), None)
    ready = by_type(st)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Failed")
    assert st["message"].startswith("Not ready (Failed)")


def test_transition_time_only_moves_when_status_changes() -> None:
    first = status.observed_status(SPEC, 1, ksvc(ready="False"), None)
    for c in first["conditions"]:
        c["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = status.observed_status(SPEC, 1, ksvc(ready="False"), first)
    assert by_type(same)["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    changed = status.observed_status(SPEC, 1, ksvc(ready="True"), first)
    assert by_type(changed)["Ready"]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert by_type(changed)["SpecValid"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_feature_flags_follow_knatives_rules() -> None:
    needed = ["kubernetes.podspec-nodeselector", "kubernetes.podspec-persistent-volume-claim"]
    assert status.disabled_features(needed, None) == []  # no config-features seen: nothing claimed
    assert status.disabled_features(needed, {}) == needed  # Knative's defaults: both off
    allowed = {
        "kubernetes.podspec-nodeselector": "Allowed",
        "kubernetes.podspec-persistent-volume-claim": "allowed",
    }
    # "allowed" admits nodeSelector, but PVCs need exactly "enabled".
    assert status.disabled_features(needed, allowed) == ["kubernetes.podspec-persistent-volume-claim"]
    enabled = dict.fromkeys(needed, "Enabled")
    assert status.disabled_features(needed, enabled) == []


def test_blocked_status_keeps_url_and_says_why() -> None:
    ready = status.observed_status(SPEC, 1, ksvc(), None)
    st = status.blocked_status(2, ready, "KnativeNotInstalled", "install it")
    assert st["url"] == ready["url"] and st["observedGeneration"] == 2
    assert by_type(st)["Ready"]["reason"] == "KnativeNotInstalled"
    assert status.readiness(st) == "false" and status.readiness(ready) == "true"


def test_contains_ignores_fields_others_added() -> None:
    desired = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "runtime", "ports": [{"containerPort": 8080}]}]}}
        }
    }
    actual = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "runtime",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {},
                        }
                    ],
                    "enableServiceLinks": False,
                }
            },
            "traffic": [{"latestRevision": True, "percent": 100}],
        }
    }
    assert contains(actual, desired)
    actual["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not contains(actual, desired)


def test_contains_compares_quantities_by_amount() -> None:
    desired = {"resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}}}
    assert contains({"resources": {"limits": {"cpu": "500m", "memory": "1024Mi"}}}, desired)
    assert not contains({"resources": {"limits": {"cpu": "600m", "memory": "1Gi"}}}, desired)
    assert not contains({"image": "0.5"}, {"image": "500m"})  # only resource amounts are quantities


def test_a_field_we_stopped_setting_is_a_difference() -> None:
    old = stamp(
        {"spec": {"template": {"metadata": {"annotations": {"a/min-scale": "0", "a/max-scale": "5"}}}}}
    )
    new = stamp({"spec": {"template": {"metadata": {"annotations": {"a/min-scale": "0"}}}}})
    live = {**old, "spec": {**old["spec"], "traffic": [{"percent": 100}]}}  # plus what Knative adds
    assert owned_fields_match(old, live)
    # Every field of `new` is still in the live object; only the hash tells that max-scale must go.
    assert contains(live["spec"], new["spec"])
    assert not owned_fields_match(new, live)


def pod(*statuses: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m-00001-deployment-x"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    return {"metadata": meta, "status": {"containerStatuses": list(statuses)}}


def crashed(code: int, message: str = "", name: str = "runtime") -> dict[str, Any]:
    return {
        "name": name,
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": {"exitCode": code, "message": message}},
    }


def test_a_crash_looping_runtime_is_reported_with_its_last_words() -> None:
    said = "model http://h/m.onnx has SHA-256 abc, but 000 was expected; refusing to serve it"
    reason, message = status.runtime_failure([pod(crashed(1, "...\n" + said))], "runtime")  # type: ignore[misc]
    assert reason == "RuntimeFailed"
    assert message.startswith("The runtime exited with code 1 (3 restarts): ") and message.endswith(said)
    # Very long logs are cut to their end, where the reason is.
    reason, message = status.runtime_failure([pod(crashed(1, "x" * 5000 + said))], "runtime")  # type: ignore[misc]
    assert message.endswith(said) and len(message) < 700


def test_an_image_that_cannot_be_pulled_is_reported() -> None:
    waiting = {
        "name": "runtime",
        "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}},
    }
    assert status.runtime_failure([pod(waiting)], "runtime") == ("ErrImageNeverPull", "not present")


def test_healthy_starting_or_other_containers_are_not_failures() -> None:
    starting = {"name": "runtime", "state": {"waiting": {"reason": "ContainerCreating"}}}
    running = {"name": "runtime", "state": {"running": {}}, "lastState": {}}
    clean_exit = {"name": "runtime", "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 0}}}
    queue_proxy = crashed(1, "queue-proxy trouble", name="queue-proxy")
    for p in (pod(starting), pod(running), pod(clean_exit), pod(queue_proxy), pod(crashed(1), deleting=True)):
        assert status.runtime_failure([p], "runtime") is None


def test_a_pod_the_scheduler_cannot_place_is_reported_with_its_reason() -> None:
    said = '0/1 nodes are available: persistentvolumeclaim "model-cache" not found.'
    pending = {
        "metadata": {"name": "m-00001-deployment-x"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": said}
            ],
        },
    }
    assert status.runtime_failure([pending], "runtime") == ("Unschedulable", said)
    # A crash says more than a pending sibling does; a pod on its way out says nothing.
    assert status.runtime_failure([pending, pod(crashed(1, "boom"))], "runtime")[0] == "RuntimeFailed"  # type: ignore[index]
    assert (
        status.runtime_failure([{**pending, "metadata": {"name": "x", "deletionTimestamp": "t"}}], "runtime")
        is None
    )
    scheduled = {
        "metadata": {"name": "y"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }
    assert status.runtime_failure([scheduled], "runtime") is None


def test_a_runtime_failure_makes_a_not_ready_service_say_why() -> None:
    failure = ("RuntimeFailed", "The runtime exited with code 1 (2 restarts): refusing to serve it")
    st = status.observed_status(SPEC, 1, ksvc(ready="Unknown"), None, failure=failure)
    assert (by_type(st)["Ready"]["status"], by_type(st)["Ready"]["reason"]) == ("False", "RuntimeFailed")
    assert "refusing to serve it" in st["message"]
    # A service Knative says is serving stays Ready: an old revision answers while a new one fails.
    st = status.observed_status(SPEC, 1, ksvc(), None, failure=failure)
    assert by_type(st)["Ready"]["status"] == "True"


def test_execution_provider_is_known_from_the_spec_once_its_revision_is_ready() -> None:
    def spec(**extra: Any) -> ModelServiceSpec:
        return ModelServiceSpec.model_validate({"model": {"uri": "s3://b/m.onnx"}, **extra})

    gpu = spec(resources={"gpu": {"count": 1}})
    fallback = spec(resources={"gpu": {"count": 1, "allowCpuFallback": True}})
    triton = spec(runtime={"name": "triton"}, resources={"gpu": {"count": 1}})
    assert status.observed_status(SPEC, 1, ksvc(), None)["executionProvider"] == "CPUExecutionProvider"
    # A replica that cannot use CUDA exits instead of serving, so a ready GPU revision is on CUDA.
    assert status.observed_status(gpu, 1, ksvc(), None)["executionProvider"] == "CUDAExecutionProvider"
    assert status.observed_status(fallback, 1, ksvc(), None)["executionProvider"] == "PerReplica"
    assert status.observed_status(triton, 1, ksvc(), None)["executionProvider"] is None
    # A GPU revision that does not come up claims nothing: what still serves is the previous revision.
    was_cpu = status.observed_status(SPEC, 1, ksvc(), None)
    failing = status.observed_status(
        gpu, 2, ksvc(generation=2, observed=2, ready="False"), was_cpu, failure=("RuntimeFailed", "no CUDA")
    )
    assert by_type(failing)["Ready"]["status"] == "False"
    assert failing["executionProvider"] == "CPUExecutionProvider"
    assert status.observed_status(gpu, 1, ksvc(ready="False"), None)["executionProvider"] is None


QUANTITIES = [
    "0",
    "1",
    "2",
    "0.5",
    "1.5",
    ".5",
    "500m",
    "1500m",
    "100u",
    "3n",
    "1k",
    "1K",
    "2M",
    "3G",
    "1T",
    "1P",
    "1E",
    "1Ki",
    "1Mi",
    "1.5Gi",
    "1536Mi",
    "2Ti",
    "1Pi",
    "1Ei",
    "1e3",
    "1E3",
    "1.5e-3",
    "+1",
    "-1",
    "12e6",
    1,
    0.25,
    "",
    "i",
    "1ki",
    "1mi",
    "1ni",
    "1ui",
    "abc",
    "1.2.3",
    "1Zi",
    "1Q",
    "Mi",
    "1 Mi",
    "0x10",
]


@pytest.mark.parametrize("quantity", QUANTITIES, ids=[repr(q) for q in QUANTITIES])
def test_quantities_parse_as_the_kubernetes_client_parses_them(quantity: object) -> None:
    from kubernetes.utils import parse_quantity as reference
    from zeroserve_operator.quantity import parse_quantity

    try:
        expected = reference(quantity)
    except ValueError:
        with pytest.raises(ValueError):
            parse_quantity(quantity)
        return
    assert parse_quantity(quantity) == expected


def test_the_operator_does_not_load_the_synchronous_kubernetes_client() -> None:
    """kopf imports `kubernetes` whenever it can: the operator's own code must not need it, so that the
    operator image can go without it (tests/test_images.py) and save its 45 MB."""
    import subprocess
    import sys

    probe = (
        "import sys; sys.modules['kubernetes'] = None\n"  # as if it were not installed
        "import zeroserve_operator.handlers, zeroserve_operator.cli\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
