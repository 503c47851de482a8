"""The ModelService API, zeroserve.dev/v1alpha1: the single source of truth for its CRD schema.

`python -m zeroserve_operator.crd` regenerates crds/modelservices.zeroserve.dev.yaml from these models;
a test fails when the checked-in CRD drifts from them. Field descriptions become `kubectl explain` text,
defaults become API-server defaults, and `x-kubernetes-validations` (CEL) carry cross-field rules.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

GROUP = "zeroserve.dev"
VERSION = "v1alpha1"
KIND = "ModelService"
PLURAL = "modelservices"
SINGULAR = "modelservice"
SHORT_NAMES = ["ms"]

# Kubernetes resource.Quantity as its own OpenAPI schema spells it, less the sign: no negative requests.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Go duration in whole seconds, as Knative's window and retention annotations take it ("90s", "1m30s").
DURATION_PATTERN = r"^([0-9]+(h|m|s))+$"
# pvc://<claim>/<path>: the claim is a DNS-1123 name, and there must be a file path after it.
MODEL_URI_PATTERN = r"^(file:///|/|https?://|s3://|gs://|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/)\S+$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# The ModelService name becomes the Knative Service name (a DNS-1035 label); revisions add "-00001".
KNATIVE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 57

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


class _Spec(BaseModel):
    # Unknown fields are an error in Python (a typo must not pass silently); the API server prunes them.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretRef(_Spec):
    name: str = Field(
        description="Name of a Secret in the ModelService's namespace.",
        min_length=1,
        max_length=253,
    )


class ModelCache(_Spec):
    claim_name: str = Field(
        alias="claimName",
        pattern=DNS_LABEL,
        max_length=253,
        description="PersistentVolumeClaim in the ModelService's namespace, writable by UID 1000, that "
        "replicas share as their model cache, keyed by SHA-256. A hostPath PersistentVolume with "
        "ReadWriteMany makes it a cache per node; a ReadWriteMany network volume, one per cluster. Needs "
        "Knative's kubernetes.podspec-persistent-volume-claim and "
        "kubernetes.podspec-persistent-volume-write.",
    )


class ModelSource(_Spec):
    model_config = validations(
        cel(
            "!has(self.cache) || has(self.sha256)",
            "model.cache needs model.sha256: a shared cache is trusted only as far as the digest it is "
            "checked against",
            ".cache",
        ),
        cel(
            "!has(self.cache) || self.uri.matches('^(https?|s3|gs)://')",
            "model.cache is for downloaded models (http, https, s3, gs): a local or pvc:// model is read "
            "where it is",
            ".cache",
        ),
    )
    uri: str = Field(
        description=(
            "Where the model comes from: file:///path or /path inside the image, http(s)://, s3://, gs://, "
            "or pvc://<claim>/<path>. The runtime fetches it into its cache at start."
        ),
        pattern=MODEL_URI_PATTERN,
        max_length=2048,
    )
    format: Literal["onnx"] = Field(default="onnx", description="Serialization format of the model file.")
    sha256: str | None = Field(
        default=None,
        description="Expected SHA-256 of the model file (64 lowercase hex digits); the runtime refuses to "
        "start on a mismatch.",
        pattern=r"^[a-f0-9]{64}$",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        alias="secretRef",
        description="Secret whose keys become the runtime's environment, for storage credentials (for "
        "example AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://; for gs://, use a serviceAccountName "
        "with Workload Identity). Its values are never logged or copied into status.",
    )
    cache: ModelCache | None = Field(
        default=None,
        description="Where replicas keep the downloaded model. Without it each replica downloads into a "
        "volume of its own, on every cold start.",
    )


class Batching(_Spec):
    model_config = validations(
        cel(
            "self.maxBatchSize > 1 || !has(self.maxQueueDelayMs) || self.maxQueueDelayMs == 0",
            "maxQueueDelayMs needs maxBatchSize > 1: with batches of one there is nothing to wait for",
            ".maxQueueDelayMs",
        )
    )
    max_batch_size: int = Field(
        default=1,
        alias="maxBatchSize",
        ge=1,
        le=1024,
        description="Largest batch the runtime forms from concurrent requests. 1 turns batching off.",
    )
    max_queue_delay_ms: int = Field(
        default=0,
        alias="maxQueueDelayMs",
        ge=0,
        le=10_000,
        description="Longest a request waits for others to join its batch, in milliseconds.",
    )


class TensorRT(_Spec):
    precision: Literal["FP32", "FP16"] = Field(
        default="FP32", description="Precision TensorRT builds the engine in; FP16 is faster, less exact."
    )


class Runtime(_Spec):
    name: Literal["onnx", "triton"] = Field(
        default="onnx",
        description="Model server: onnx (Zeroserve's ONNX Runtime server) or triton (NVIDIA Triton).",
    )
    image: str | None = Field(
        default=None,
        description="Container image overriding the operator's default image for this runtime.",
        min_length=1,
        max_length=512,
    )
    protocol: Literal["rest", "grpc"] = Field(
        default="rest",
        description="Protocol the Knative route carries to the runtime: rest (Open Inference Protocol v2 "
        "over HTTP/1.1, port name http1) or grpc (OIP v2 gRPC over h2c). Knative routes one port per "
        "container.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Intra-op threads per inference. Defaults to the CPUs the container may use, shared "
        "among parallelInferences.",
    )
    parallel_inferences: int | None = Field(
        default=None,
        alias="parallelInferences",
        ge=1,
        le=64,
        description="Inferences run at once (default 1). The onnx runtime runs them on its one loaded "
        "model: 1 gives each request every core, for the lowest latency; one per CPU, each with 1 thread, "
        "gives the most throughput under concurrent load. Triton loads this many model instances "
        "(instance_group count).",
    )
    batching: Batching | None = Field(default=None, description="Adaptive batching of concurrent requests.")
    tensorrt: TensorRT | None = Field(
        default=None,
        description="Triton on a GPU only: run the ONNX model through TensorRT, Triton's GPU execution "
        "accelerator for ONNX Runtime. The engine is built when the model loads, which lengthens every "
        "cold start.",
    )


class GPU(_Spec):
    count: int = Field(ge=1, le=16, description="GPUs per replica.")
    resource_name: str = Field(
        default="nvidia.com/gpu",
        alias="resourceName",
        description="Extended resource name the device plugin advertises.",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-zA-Z0-9._-]+$",
        max_length=253,
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        alias="allowCpuFallback",
        description="onnx runtime only: a replica that cannot use CUDA (no NVIDIA driver on its node, no GPU "
        "in its container) serves on CPU instead of failing. Off, such a replica exits and the "
        "ModelService's Ready condition says why, so every replica that serves runs on the GPU; on, the "
        "provider each replica got is in its zeroserve_execution_provider metric.",
    )


class Resources(_Spec):
    cpu: Quantity | None = Field(
        default=None, description="CPU per replica (request and limit), e.g. 2 or 500m."
    )
    memory: Quantity | None = Field(
        default=None, description="Memory per replica (request and limit), e.g. 2Gi."
    )
    gpu: GPU | None = Field(default=None, description="GPUs per replica. Absent means a CPU-only replica.")


class Scaling(_Spec):
    model_config = validations(
        cel(
            "!has(self.maxReplicas) || self.maxReplicas >= self.minReplicas",
            "maxReplicas must be at least minReplicas",
            ".maxReplicas",
        ),
        cel(
            "!has(self.initialScale) || !has(self.maxReplicas) || self.initialScale <= self.maxReplicas",
            "initialScale must not exceed maxReplicas",
            ".initialScale",
        ),
        cel(
            "!has(self.scaleToZeroRetention) || duration(self.scaleToZeroRetention) <= duration('1h')",
            "scaleToZeroRetention must be at most 1h",
            ".scaleToZeroRetention",
        ),
        cel(
            "!has(self.window) || (duration(self.window) >= duration('6s') && "
            "duration(self.window) <= duration('1h'))",
            "window must be between 6s and 1h",
            ".window",
        ),
    )
    min_replicas: int = Field(
        default=0,
        alias="minReplicas",
        ge=0,
        le=1000,
        description="Replicas kept while idle. 0 (the default) scales to zero: no cost while idle, and the "
        "first request after idling waits for a cold start.",
    )
    max_replicas: int | None = Field(
        default=None,
        alias="maxReplicas",
        ge=1,
        le=1000,
        description="Upper bound on replicas. Absent means no bound.",
    )
    metric: Literal["concurrency", "rps"] = Field(
        default="concurrency",
        description="What the autoscaler tracks: in-flight requests per replica, or requests per second.",
    )
    target: float | None = Field(
        default=None,
        ge=0.01,
        description="Autoscaling target per replica for the chosen metric.",
    )
    container_concurrency: int = Field(
        default=0,
        alias="containerConcurrency",
        ge=0,
        le=1000,
        description="Hard limit on requests in flight per replica; 0 means no limit. The runtime sizes its "
        "queue to match.",
    )
    initial_scale: int | None = Field(
        default=None,
        alias="initialScale",
        ge=0,
        le=1000,
        description="Replicas started when the service is created. 0 needs allow-zero-initial-scale in the "
        "cluster's config-autoscaler.",
    )
    scale_to_zero_retention: Duration | None = Field(
        default=None,
        alias="scaleToZeroRetention",
        description="How long the last replica stays after traffic stops, e.g. 5m.",
    )
    window: Duration | None = Field(
        default=None,
        description="Stable window over which the autoscaler averages the metric, between 6s and 1h.",
    )


class Toleration(_Spec):
    model_config = validations(
        cel(
            "self.operator != 'Exists' || !has(self.value)",
            "value must be empty when operator is Exists",
            ".value",
        ),
        cel(
            "self.operator == 'Exists' || has(self.key)",
            "key is required when operator is Equal",
            ".key",
        ),
        cel(
            "!has(self.tolerationSeconds) || self.effect == 'NoExecute'",
            "tolerationSeconds applies only to the NoExecute effect",
            ".tolerationSeconds",
        ),
    )
    key: str | None = Field(default=None, description="Taint key to tolerate; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        alias="tolerationSeconds",
        ge=0,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )


class KeyRef(_Spec):
    name: str = Field(min_length=1, max_length=253, description="Name of the Secret or ConfigMap.")
    key: str = Field(min_length=1, max_length=253, description="Key within it.")


class EnvVarSource(_Spec):
    model_config = validations(
        cel(
            "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "exactly one of secretKeyRef and configMapKeyRef must be set",
        )
    )
    secret_key_ref: KeyRef | None = Field(
        default=None, alias="secretKeyRef", description="A key of a Secret in the same namespace."
    )
    config_map_key_ref: KeyRef | None = Field(
        default=None, alias="configMapKeyRef", description="A key of a ConfigMap in the same namespace."
    )


class EnvVar(_Spec):
    model_config = validations(
        cel("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"),
        cel(
            "!(self.name in ['PORT', 'K_SERVICE', 'K_CONFIGURATION', 'K_REVISION'])",
            "PORT, K_SERVICE, K_CONFIGURATION and K_REVISION are reserved by Knative",
            ".name",
        ),
        cel("!self.name.startsWith('ZEROSERVE_')", "ZEROSERVE_ variables are set from the spec", ".name"),
    )
    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None,
        alias="valueFrom",
        description="Value from a Secret or ConfigMap key: the way to pass secrets.",
    )


class ModelServiceSpec(_Spec):
    model_config = validations(
        cel(
            "self.runtime.name != 'triton' || !has(self.runtime.threads)",
            "runtime.threads applies to the onnx runtime; Triton takes threads from its model config",
            ".runtime.threads",
        ),
        cel(
            "!has(self.runtime.tensorrt) || (self.runtime.name == 'triton' && has(self.resources.gpu))",
            "runtime.tensorrt needs runtime.name triton and resources.gpu: TensorRT is Triton's GPU "
            "accelerator",
            ".runtime.tensorrt",
        ),
        cel(
            "self.runtime.name == 'onnx' || !has(self.resources.gpu) || "
            "!has(self.resources.gpu.allowCpuFallback) || !self.resources.gpu.allowCpuFallback",
            "resources.gpu.allowCpuFallback applies to the onnx runtime; Triton's GPU instances have no CPU "
            "fallback",
            ".resources.gpu.allowCpuFallback",
        ),
    )
    model: ModelSource = Field(description="The model to serve.")
    runtime: Runtime = Field(
        default_factory=Runtime,
        json_schema_extra={"default": {}},
        description="The model server that runs the model.",
    )
    resources: Resources = Field(
        default_factory=Resources, json_schema_extra={"default": {}}, description="Resources of one replica."
    )
    scaling: Scaling = Field(
        default_factory=Scaling,
        json_schema_extra={"default": {}},
        description="Autoscaling, scale to zero by default.",
    )
    timeout_seconds: int = Field(
        default=300,
        alias="timeoutSeconds",
        ge=1,
        le=3600,
        description="Longest a request may take end to end. Knative rejects values above the cluster's "
        "max-revision-timeout-seconds (600 unless raised).",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        alias="nodeSelector",
        description="Node labels a replica must run on. Needs Knative's kubernetes.podspec-nodeselector.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=64,
        description="Taints a replica tolerates (GPU nodes are often tainted). Needs Knative's "
        "kubernetes.podspec-tolerations.",
    )
    env: list[EnvVar] | None = Field(
        default=None, max_length=128, description="Extra environment for the runtime container."
    )
    service_account_name: str | None = Field(
        default=None,
        alias="serviceAccountName",
        pattern=DNS_LABEL,
        max_length=253,
        description="ServiceAccount the replicas run as, for example one with cloud storage access.",
    )
    visibility: Literal["external", "cluster-local"] = Field(
        default="external",
        description="Who can reach the service: through the cluster's ingress (external), or only from "
        "inside the cluster (cluster-local, Knative's networking.knative.dev/visibility).",
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    type: str = Field(description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str | None = Field(default=None, description="One CamelCase word for machines.")
    message: str | None = Field(default=None, description="What happened, for humans.")
    last_transition_time: str | None = Field(
        default=None, alias="lastTransitionTime", description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="Spec generation this condition is about."
    )


class ModelServiceStatus(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="Spec generation last reconciled."
    )
    url: str | None = Field(default=None, description="Where to send inference requests.")
    latest_ready_revision: str | None = Field(
        default=None, alias="latestReadyRevision", description="Knative revision serving traffic."
    )
    device: Literal["cpu", "gpu"] | None = Field(default=None, description="cpu or gpu.")
    execution_provider: Literal["CPUExecutionProvider", "CUDAExecutionProvider", "PerReplica"] | None = Field(
        default=None,
        alias="executionProvider",
        description="onnx runtime: the onnxruntime execution provider the serving revision's replicas "
        "run on. CUDAExecutionProvider for a GPU spec holds by construction: a replica that cannot "
        "use CUDA exits instead of serving. PerReplica with resources.gpu.allowCpuFallback: each "
        "replica's zeroserve_execution_provider metric says which it got. Set once the revision is "
        "Ready.",
    )
    message: str | None = Field(default=None, description="The state in one sentence.")
    conditions: list[Condition] | None = Field(
        default=None, description="Ready, ServiceReady, and more where useful."
    )


class ModelService(BaseModel):
    """A model served on Knative, scaled to zero while idle."""

    model_config = ConfigDict(populate_by_name=True)
    api_version: Literal["zeroserve.dev/v1alpha1"] = Field(
        default="zeroserve.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["ModelService"] = "ModelService"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelServiceSpec
    status: ModelServiceStatus | None = None
