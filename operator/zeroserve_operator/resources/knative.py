"""The Knative Service for a ModelService, built by a pure function (Knative's `resources/` pattern)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kopf

from zeroserve_operator.api import ModelServiceSpec
from zeroserve_operator.ownership import stamp
from zeroserve_operator.resources import triton
from zeroserve_operator.resources.scraping import scrape_annotations
from zeroserve_operator.settings import OperatorSettings

KNATIVE_API_VERSION = "serving.knative.dev/v1"
KNATIVE_GROUP, KNATIVE_VERSION = KNATIVE_API_VERSION.split("/")
KNATIVE_PLURAL = "services"

AUTOSCALING = "autoscaling.knative.dev/"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
KPA_CLASS = "kpa.autoscaling.knative.dev"

MANAGED_BY = "zeroserve-operator"
MODELSERVICE_LABEL = "zeroserve.dev/modelservice"
VISIBILITY_LABEL = "networking.knative.dev/visibility"

HTTP_PORT = 8080
GRPC_PORT = 9000
MODEL_CACHE = "/var/cache/zeroserve/models"
PVC_MOUNT = "/mnt/models"
RUNTIME_UID = 1000
CONTAINER_NAME = "runtime"


def labels(name: str, runtime: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"zeroserve-{runtime}",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "zeroserve",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        MODELSERVICE_LABEL: name,
    }


def is_gpu(spec: ModelServiceSpec) -> bool:
    return spec.resources.gpu is not None


def autoscaling_annotations(spec: ModelServiceSpec, settings: OperatorSettings) -> dict[str, str]:
    scaling = spec.scaling
    annotations = {
        AUTOSCALING + "class": KPA_CLASS,
        AUTOSCALING + "metric": scaling.metric,
        # Written even when 0: scale to zero is the point, and it must not depend on a cluster default.
        AUTOSCALING + "min-scale": str(scaling.min_replicas),
        PROGRESS_DEADLINE: settings.gpu_progress_deadline if is_gpu(spec) else settings.progress_deadline,
    }
    optional = {
        "max-scale": scaling.max_replicas,
        "target": None if scaling.target is None else _number(scaling.target),
        "initial-scale": scaling.initial_scale,
        "scale-to-zero-pod-retention-period": scaling.scale_to_zero_retention,
        "window": scaling.window,
    }
    annotations.update({AUTOSCALING + k: str(v) for k, v in optional.items() if v is not None})
    return annotations


def pvc_source(spec: ModelServiceSpec) -> tuple[str, str] | None:
    """(claim, path inside it) for a pvc://claim/path model, else None."""
    if not spec.model.uri.startswith("pvc://"):
        return None
    claim, _, path = spec.model.uri.removeprefix("pvc://").partition("/")
    return claim, path


def runtime_model_uri(spec: ModelServiceSpec) -> str:
    """What the runtime loads: a pvc:// model is mounted read-only and read as a local file."""
    pvc = pvc_source(spec)
    return f"file://{PVC_MOUNT}/{pvc[1]}" if pvc else spec.model.uri


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def runtime_env(name: str, spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """The runtime's settings, as the ZEROSERVE_ environment variables its pydantic-settings read."""
    values: dict[str, object | None] = {
        "ZEROSERVE_MODEL_NAME": name,
        "ZEROSERVE_MODEL_URI": runtime_model_uri(spec),
        "ZEROSERVE_MODEL_FORMAT": spec.model.format,
        "ZEROSERVE_MODEL_SHA256": spec.model.sha256,
        "ZEROSERVE_CACHE_DIR": MODEL_CACHE,
        "ZEROSERVE_HTTP_PORT": HTTP_PORT,
        # Knative routes one port; a gRPC server nobody can reach would only slow every cold start.
        "ZEROSERVE_GRPC_PORT": GRPC_PORT if spec.runtime.protocol == "grpc" else 0,
        "ZEROSERVE_DEVICE": "gpu" if is_gpu(spec) else "cpu",
        "ZEROSERVE_ALLOW_CPU_FALLBACK": "true"
        if spec.resources.gpu and spec.resources.gpu.allow_cpu_fallback
        else None,
        "ZEROSERVE_THREADS": spec.runtime.threads,
        "ZEROSERVE_PARALLEL_INFERENCES": spec.runtime.parallel_inferences,
        # The runtime's admission limit matches Knative's hard limit, so the queue-proxy and the server
        # agree on what "full" means (0: unlimited in Knative, the runtime's own default then).
        "ZEROSERVE_MAX_CONCURRENCY": spec.scaling.container_concurrency or None,
        # Knative gives revision pods terminationGracePeriodSeconds = timeoutSeconds: a request accepted
        # just before SIGTERM may take that long, and the runtime's own 30 s would cut it short.
        "ZEROSERVE_SHUTDOWN_GRACE_SECONDS": spec.timeout_seconds,
    }
    if spec.runtime.batching is not None:
        values["ZEROSERVE_MAX_BATCH_SIZE"] = spec.runtime.batching.max_batch_size
        values["ZEROSERVE_MAX_QUEUE_DELAY_MS"] = spec.runtime.batching.max_queue_delay_ms
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in values.items() if v is not None]
    for var in spec.env or []:
        env.append(var.model_dump(by_alias=True, exclude_none=True))
    return env


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "seccompProfile": {"type": "RuntimeDefault"},
    "capabilities": {"drop": ["ALL"]},
}


def readiness_probe(port: int) -> dict[str, Any]:
    """OIP v2 readiness, every second.

    Not Knative's "aggressive" periodSeconds 0: Knative copies the probe onto queue-proxy for the kubelet,
    and the API server turns 0 into its default, every 10 s with a 1 s timeout. A server not ready within
    a second of the kubelet's first probe was then Ready 10 s late, and the autoscaler, which counts the
    revision active only from then and scales it to zero no sooner than a stable window after, held the
    replica that much longer than `zeroserve advise` predicts. The activator probes a starting pod itself
    every 200 ms, so a cold answer comes no later for it."""
    return {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": 1}


def runtime_container(name: str, spec: ModelServiceSpec, settings: OperatorSettings) -> dict[str, Any]:
    runtime = spec.runtime
    port = (
        {"name": "h2c", "containerPort": GRPC_PORT}
        if runtime.protocol == "grpc"
        else {"name": "http1", "containerPort": HTTP_PORT}
    )
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": runtime.image or (settings.onnx_gpu_image if is_gpu(spec) else settings.onnx_image),
        "args": ["serve"],
        "env": runtime_env(name, spec),
        # Knative routes exactly one port per revision; the runtime serves both protocols regardless.
        "ports": [port],
        # A runtime that cannot start (a 404 model, a bad sha256) says why in its last log lines; this
        # puts them in the pod's status, where the operator and `kubectl describe` can read them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Ready only once the model is fetched, loaded and warmed up: the activator holds requests until
        # then, so a cold start is slow but never an error.
        "readinessProbe": readiness_probe(HTTP_PORT),
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "volumeMounts": model_mounts(spec),
    }
    resources = resource_requirements(spec)
    if resources:
        container["resources"] = resources
    if spec.model.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.model.secret_ref.name}}]
    return container


def model_mounts(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """What the container that fetches the model mounts: the cache, /tmp and a pvc:// model's claim."""
    mounts: list[dict[str, Any]] = [
        {"name": "model-cache", "mountPath": MODEL_CACHE},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if pvc_source(spec):
        mounts.append({"name": "model-pvc", "mountPath": PVC_MOUNT, "readOnly": True})
    return mounts


def fetch_container(name: str, spec: ModelServiceSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Triton's init container: `zeroserve fetch` from the runtime image downloads and verifies the
    model as the onnx runtime would, and writes Triton's model repository with its config.pbtxt."""
    env = [e for e in runtime_env(name, spec) if e["name"] in triton.FETCH_ENV]
    env += [
        {"name": "ZEROSERVE_MODEL_REPOSITORY", "value": triton.MODEL_REPOSITORY},
        {"name": "ZEROSERVE_TRITON_CONFIG", "value": triton.model_config(name, spec)},
    ]
    container: dict[str, Any] = {
        "name": triton.FETCH_CONTAINER,
        "image": settings.onnx_image,
        "args": ["fetch"],
        "env": env,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "volumeMounts": [*model_mounts(spec), {"name": "models", "mountPath": triton.MODEL_REPOSITORY}],
    }
    if spec.model.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.model.secret_ref.name}}]
    return container


def triton_container(spec: ModelServiceSpec, settings: OperatorSettings) -> dict[str, Any]:
    """NVIDIA's tritonserver, unmodified, serving the repository the init container wrote."""
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.runtime.image or settings.triton_image,
        "args": triton.server_args(spec),
        "ports": [triton.port(spec)],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Strict readiness: ready once every model in the repository is loaded. Probed on the HTTP port
        # even when Knative routes gRPC, as the onnx runtime is.
        "readinessProbe": readiness_probe(triton.TRITON_HTTP_PORT),
        # NVIDIA's image has the user triton-server as uid 1000.
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
        "volumeMounts": [
            {"name": "models", "mountPath": triton.MODEL_REPOSITORY, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if spec.env:
        container["env"] = [var.model_dump(by_alias=True, exclude_none=True) for var in spec.env]
    resources = resource_requirements(spec)
    if resources:
        container["resources"] = resources
    return container


def resource_requirements(spec: ModelServiceSpec) -> dict[str, Any]:
    """Requests equal limits: a replica's latency should not depend on its neighbours."""
    amounts: dict[str, str] = {}
    if spec.resources.cpu:
        amounts["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        amounts["memory"] = spec.resources.memory
    if spec.resources.gpu is not None:
        amounts[spec.resources.gpu.resource_name] = str(spec.resources.gpu.count)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def pod_placement(spec: ModelServiceSpec, settings: OperatorSettings) -> dict[str, Any]:
    node_selector = spec.node_selector
    tolerations = (
        [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
        if spec.tolerations is not None
        else None
    )
    if is_gpu(spec):
        node_selector = node_selector if node_selector is not None else settings.gpu_node_selector
        tolerations = tolerations if tolerations is not None else settings.gpu_tolerations
    placement: dict[str, Any] = {}
    if node_selector:
        placement["nodeSelector"] = dict(node_selector)
    if tolerations:
        placement["tolerations"] = tolerations
    return placement


def model_cache_volume(spec: ModelServiceSpec) -> dict[str, Any]:
    """The runtime's cache folder: the ModelService's shared claim, mounted writable so that the first
    replica to download a model leaves it for the next cold start, or else an emptyDir of the pod's own."""
    if spec.model.cache is None:
        return {"name": "model-cache", "emptyDir": {}}
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": spec.model.cache.claim_name}}


def build_knative_service(body: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """The desired Knative Service for a ModelService `body` (as the API server returns it)."""
    spec = ModelServiceSpec.model_validate(body["spec"])
    name = body["metadata"]["name"]
    pod_labels = labels(name, spec.runtime.name)
    template_spec: dict[str, Any] = {
        "timeoutSeconds": spec.timeout_seconds,
        "enableServiceLinks": False,
        "containers": [runtime_container(name, spec, settings)],
        "volumes": [
            model_cache_volume(spec),
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        ],
        **pod_placement(spec, settings),
    }
    metrics_port = HTTP_PORT
    if spec.runtime.name == "triton":
        template_spec["initContainers"] = [fetch_container(name, spec, settings)]
        template_spec["containers"] = [triton_container(spec, settings)]
        template_spec["volumes"].append({"name": "models", "emptyDir": {}})
        metrics_port = triton.TRITON_METRICS_PORT
    if pvc := pvc_source(spec):
        template_spec["volumes"].append(
            {"name": "model-pvc", "persistentVolumeClaim": {"claimName": pvc[0], "readOnly": True}}
        )
    if spec.scaling.container_concurrency:
        # 0 (unlimited) is Knative's default; leaving it out also suits clusters that forbid it.
        template_spec["containerConcurrency"] = spec.scaling.container_concurrency
    if spec.service_account_name:
        template_spec["serviceAccountName"] = spec.service_account_name
    else:
        # Model servers never call the Kubernetes API: no token unless an identity was asked for.
        template_spec["automountServiceAccountToken"] = False
    service_labels = dict(pod_labels)
    if spec.visibility == "cluster-local":
        # Knative then routes only the cluster-local address (name.namespace.svc), not the ingress's.
        service_labels[VISIBILITY_LABEL] = "cluster-local"
    ksvc: dict[str, Any] = {
        "apiVersion": KNATIVE_API_VERSION,
        "kind": "Service",
        "metadata": {"name": name, "labels": service_labels},
        "spec": {
            "template": {
                "metadata": {
                    "labels": dict(pod_labels),
                    "annotations": {
                        **autoscaling_annotations(spec, settings),
                        **scrape_annotations(metrics_port),
                    },
                },
                "spec": template_spec,
            }
        },
    }
    # Owned by the ModelService, so deletion is left to the garbage collector. (Not kopf.adopt: it would
    # also copy the ModelService's labels, which then lag behind, since label edits trigger no reconcile.)
    ksvc["metadata"]["namespace"] = body["metadata"]["namespace"]
    kopf.append_owner_reference(ksvc, owner=body)  # type: ignore[arg-type]
    return stamp(ksvc)
