"""ModelService status from the Knative Service's: pure functions, like Knative's lifecycle helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from zeroserve_operator.api import ModelServiceSpec

READY = "Ready"
SERVICE_READY = "ServiceReady"
SPEC_VALID = "SpecValid"
KNATIVE_FEATURES = "KnativeFeaturesEnabled"

# The config-features flags (knative-serving/config-features) a spec needs, and Knative's defaults.
FEATURE_DEFAULTS = {
    "kubernetes.podspec-volumes-emptydir": "enabled",
    "kubernetes.podspec-nodeselector": "disabled",
    "kubernetes.podspec-tolerations": "disabled",
    "kubernetes.podspec-persistent-volume-claim": "disabled",
    "kubernetes.podspec-persistent-volume-write": "disabled",
    "kubernetes.podspec-init-containers": "disabled",
}
# nodeSelector and tolerations pass when a flag is "allowed" too; PVCs need exactly "enabled".
FEATURE_ACCEPTS = {
    "kubernetes.podspec-volumes-emptydir": {"enabled"},
    "kubernetes.podspec-nodeselector": {"enabled", "allowed"},
    "kubernetes.podspec-tolerations": {"enabled", "allowed"},
    "kubernetes.podspec-persistent-volume-claim": {"enabled"},
    "kubernetes.podspec-persistent-volume-write": {"enabled"},
    "kubernetes.podspec-init-containers": {"enabled"},
}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def required_features(ksvc: Mapping[str, Any]) -> list[str]:
    """The Knative feature flags the built Knative Service relies on."""
    pod = ksvc["spec"]["template"]["spec"]
    needed = []
    if any("emptyDir" in v for v in pod.get("volumes", [])):
        needed.append("kubernetes.podspec-volumes-emptydir")
    if pod.get("nodeSelector"):
        needed.append("kubernetes.podspec-nodeselector")
    if pod.get("tolerations"):
        needed.append("kubernetes.podspec-tolerations")
    claims = [v["persistentVolumeClaim"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
    if claims:
        needed.append("kubernetes.podspec-persistent-volume-claim")
    if any(not claim.get("readOnly", False) for claim in claims):
        needed.append("kubernetes.podspec-persistent-volume-write")
    if pod.get("initContainers"):
        needed.append("kubernetes.podspec-init-containers")
    return needed


def disabled_features(needed: Sequence[str], config_features: Mapping[str, str] | None) -> list[str]:
    """Which of `needed` the cluster's config-features turns off. None means no Knative config seen,
    as on a cluster where Knative runs elsewhere or is not installed yet: nothing is reported then."""
    if config_features is None:
        return []
    return [
        flag
        for flag in needed
        if config_features.get(flag, FEATURE_DEFAULTS[flag]).strip().lower() not in FEATURE_ACCEPTS[flag]
    ]


def condition(type_: str, status: str, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now(),
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None, updates: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions after `updates`, keeping lastTransitionTime where a condition's status did not change,
    so the time says when it changed and a repeated reconcile writes nothing new."""
    before = {c["type"]: c for c in previous or []}
    merged = {t: dict(c) for t, c in before.items()}
    for update in updates:
        old = before.get(update["type"])
        new = dict(update)
        if old is not None and old.get("status") == new["status"]:
            new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        merged[update["type"]] = new
    order = [READY, SERVICE_READY, SPEC_VALID, KNATIVE_FEATURES]
    return sorted(
        merged.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"])
    )


def knative_serving(ksvc: Mapping[str, Any] | None) -> bool:
    """Knative says the Knative Service is Ready."""
    return (_knative_ready(ksvc) or {}).get("status") == "True"


def _knative_ready(ksvc: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for c in ((ksvc or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c
    return None


def observed_status(
    spec: ModelServiceSpec,
    generation: int,
    ksvc: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    disabled: Sequence[str] = (),
    failure: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The whole status a ModelService should show, given its Knative Service as last read and, while that
    is not ready, why its runtime pods fail (`runtime_failure`)."""
    previous = previous or {}
    ks = (ksvc or {}).get("status") or {}
    ks_ready = _knative_ready(ksvc)
    # Knative's status is about our latest spec only once it has observed the ksvc generation we wrote.
    ks_current = bool(ksvc) and ks.get("observedGeneration") == ksvc["metadata"].get("generation")  # type: ignore[index]
    updates = [condition(SPEC_VALID, "True", "Valid", "The spec is valid.", generation)]

    if disabled:
        message = features_message(disabled)
        features = condition(KNATIVE_FEATURES, "False", "FeatureDisabled", message, generation)
        service = condition(SERVICE_READY, "False", "FeatureDisabled", message, generation)
    else:
        features = condition(
            KNATIVE_FEATURES, "True", "Enabled", "Every Knative feature this spec needs is on.", generation
        )
        ks_serving = ks_current and ks_ready is not None and ks_ready.get("status") == "True"
        if failure is not None and not ks_serving:
            service = condition(SERVICE_READY, "False", failure[0], failure[1], generation)
        elif ks_ready is None or not ks_current:
            service = condition(
                SERVICE_READY,
                "Unknown",
                "Reconciling",
                "Waiting for Knative to report on the Knative Service.",
                generation,
            )
        else:
            service = condition(
                SERVICE_READY,
                ks_ready.get("status", "Unknown"),
                ks_ready.get("reason") or ("Ready" if ks_ready.get("status") == "True" else "NotReady"),
                ks_ready.get("message") or "The Knative Service is ready.",
                generation,
            )
    ready = dict(service, type=READY)
    updates += [features, service, ready]

    url = ks.get("url") if ks_current else previous.get("url")
    revision = ks.get("latestReadyRevisionName") or previous.get("latestReadyRevision")
    if ready["status"] == "True":
        message = (
            f"Serving at {url} from revision {revision}; scales to {spec.scaling.min_replicas} when idle."
        )
    else:
        message = f"Not ready ({ready['reason']}): {ready['message']}"
    return {
        "observedGeneration": generation,
        "url": url,
        "latestReadyRevision": revision,
        "device": "gpu" if spec.resources.gpu is not None else "cpu",
        # Only a ready revision's: until then the one serving (if any) is the previous revision, and with
        # it the previous value.
        "executionProvider": (
            execution_provider(spec) if ready["status"] == "True" else previous.get("executionProvider")
        ),
        "message": message,
        "conditions": merge_conditions(previous.get("conditions"), updates),
    }


def execution_provider(spec: ModelServiceSpec) -> str | None:
    """The onnxruntime execution provider a spec's replicas serve on, known without reading them (the
    operator has no pods/proxy): the runtime exits rather than serve a GPU spec on CPU, so a GPU
    replica that serves is on CUDA, unless the spec allowed CPU. Triton is not onnxruntime's server."""
    if spec.runtime.name != "onnx":
        return None
    if spec.resources.gpu is None:
        return "CPUExecutionProvider"
    return "PerReplica" if spec.resources.gpu.allow_cpu_fallback else "CUDAExecutionProvider"


# Waiting reasons that will not clear by themselves: the container cannot even start.
STUCK_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
MESSAGE_TAIL = 600


def runtime_failure(
    pods: Sequence[Mapping[str, Any]], container: str, init_container: str | None = None
) -> tuple[str, str] | None:
    """Why the runtime container of a ModelService's pods cannot serve, from the pods' own status, or None.
    `init_container` is the one that fetches the model before the server starts (Triton's).

    Knative looks at a revision's pods only when the revision is reconciled, which a crash loop does not
    cause until the progress deadline passes (15 minutes by default here); the pods say it at once."""
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        pod_status = pod.get("status") or {}
        watched = [
            *(
                ("The model fetch (init container)", s)
                for s in pod_status.get("initContainerStatuses") or []
                if s.get("name") == init_container
            ),
            *(
                ("The runtime", s)
                for s in pod_status.get("containerStatuses") or []
                if s.get("name") == container
            ),
        ]
        for who, status in watched:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                return waiting["reason"], waiting.get("message") or waiting["reason"]
            # A failed init container may still be in its terminated state, not yet restarted.
            terminated = (
                (status.get("lastState") or {}).get("terminated")
                or (status.get("state") or {}).get("terminated")
                or {}
            )
            if terminated.get("exitCode", 0) != 0:
                said = _last_words(terminated.get("message") or "")
                return (
                    "RuntimeFailed",
                    f"{who} exited with code {terminated['exitCode']} "
                    f"({status.get('restartCount', 0)} restarts)" + (f": {said}" if said else "."),
                )
    return _unschedulable(pods)


def _last_words(log: str) -> str:
    """The reason in a failed container's last log lines: their end, where a runtime says why it exits,
    or for Triton, whose last line only says that some model failed, the line naming the model and why."""
    log = log.strip()
    model_failed = log.rfind("failed to load '")
    if model_failed != -1:
        return log[model_failed:][:MESSAGE_TAIL]
    return log[-MESSAGE_TAIL:]


def _unschedulable(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The scheduler's reason a pod cannot be placed (a model cache claim that does not exist, no GPU node
    free), which Knative reports only at the progress deadline. Only while the service is not ready, so
    a scale-up waiting for a new node does not mark a serving ModelService down."""
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return "Unschedulable", (c.get("message") or "The scheduler cannot place the pod.")[
                    :MESSAGE_TAIL
                ]
    return None


def features_message(disabled: Sequence[str]) -> str:
    flags = " and ".join(disabled)
    return (
        f"This spec needs Knative's {flags}, which the cluster has disabled: set "
        f"{'them' if len(disabled) > 1 else 'it'} to enabled in the config-features ConfigMap "
        "(namespace knative-serving)."
    )


def blocked_status(
    generation: int, previous: Mapping[str, Any] | None, reason: str, message: str, spec_valid: bool = True
) -> dict[str, Any]:
    """Status for a ModelService that cannot progress: Ready False with the reason, the rest kept."""
    previous = previous or {}
    updates = [condition(READY, "False", reason, message, generation)]
    if not spec_valid:
        updates.append(condition(SPEC_VALID, "False", reason, message, generation))
    return {
        **{k: v for k, v in previous.items() if k != "conditions"},
        "observedGeneration": generation,
        "message": f"Not ready ({reason}): {message}",
        "conditions": merge_conditions(previous.get("conditions"), updates),
    }


def ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == READY), None)


def readiness(status: Mapping[str, Any] | None) -> str:
    ready = ready_condition(status) or {}
    return {"True": "true", "False": "false"}.get(ready.get("status", ""), "unknown")
