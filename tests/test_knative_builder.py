"""build_knative_service is a pure function: ModelService in, Knative Service out, no cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from zeroserve_operator.resources.knative import build_knative_service
from zeroserve_operator.resources.status import required_features
from zeroserve_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    onnx_image="registry.example/onnx:1",
    triton_image="registry.example/triton:1",
    gpu_node_selector={"nvidia.com/gpu.present": "true"},
    gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
)


def modelservice(spec: dict[str, Any], name: str = "digits") -> dict[str, Any]:
    return {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


CPU = {"model": {"uri": "s3://models/digits.onnx"}}


def build(spec: dict[str, Any], settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    return build_knative_service(modelservice(spec), settings)


def template(ksvc: dict[str, Any]) -> dict[str, Any]:
    return ksvc["spec"]["template"]


def container(ksvc: dict[str, Any]) -> dict[str, Any]:
    (only,) = template(ksvc)["spec"]["containers"]
    return only


def env(ksvc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(ksvc)["env"]}


def test_min_scale_zero_is_written_explicitly() -> None:
    annotations = template(build(CPU))["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    for unset in ("max-scale", "target", "initial-scale", "scale-to-zero-pod-retention-period", "window"):
        assert f"autoscaling.knative.dev/{unset}" not in annotations


def test_scaling_settings_become_template_annotations() -> None:
    spec = {
        **CPU,
        "scaling": {
            "minReplicas": 1,
            "maxReplicas": 8,
            "metric": "rps",
            "target": 150,
            "initialScale": 2,
            "scaleToZeroRetention": "5m",
            "window": "2m30s",
            "containerConcurrency": 4,
        },
        "timeoutSeconds": 90,
    }
    ksvc = build(spec)
    annotations = template(ksvc)["metadata"]["annotations"]
    assert {k.removeprefix("autoscaling.knative.dev/"): v for k, v in annotations.items()}.items() >= {
        "min-scale": "1",
        "max-scale": "8",
        "metric": "rps",
        "target": "150",
        "initial-scale": "2",
        "scale-to-zero-pod-retention-period": "5m",
        "window": "2m30s",
    }.items()
    assert template(ksvc)["spec"]["containerConcurrency"] == 4
    assert "containerConcurrency" not in template(build(CPU))["spec"]  # 0: left to Knative's default
    assert template(ksvc)["spec"]["timeoutSeconds"] == 90
    assert env(ksvc)["ZEROSERVE_MAX_CONCURRENCY"] == "4"
    # Knative's grace period for the pod is timeoutSeconds; the runtime drains for as long.
    assert env(ksvc)["ZEROSERVE_SHUTDOWN_GRACE_SECONDS"] == "90"
    # Knative rejects autoscaling annotations on the Service's own metadata.
    assert not any(k.startswith("autoscaling.") for k in ksvc["metadata"]["annotations"])


def test_runtime_container_carries_model_and_settings() -> None:
    spec = {
        "model": {"uri": "gs://bucket/m.onnx", "sha256": "a" * 64},
        "runtime": {
            "threads": 1,
            "parallelInferences": 2,
            "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 5},
        },
    }
    ksvc = build(spec)
    c = container(ksvc)
    assert c["image"] == "registry.example/onnx:1"
    assert c["args"] == ["serve"]
    assert (
        env(ksvc).items()
        >= {
            "ZEROSERVE_MODEL_NAME": "digits",
            "ZEROSERVE_MODEL_URI": "gs://bucket/m.onnx",
            "ZEROSERVE_MODEL_SHA256": "a" * 64,
            "ZEROSERVE_THREADS": "1",
            "ZEROSERVE_PARALLEL_INFERENCES": "2",
            "ZEROSERVE_MAX_BATCH_SIZE": "8",
            "ZEROSERVE_MAX_QUEUE_DELAY_MS": "5",
            "ZEROSERVE_DEVICE": "cpu",
        }.items()
    )
    assert c["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert "resources" not in c


def test_grpc_protocol_routes_the_h2c_port_and_probes_readiness_over_http() -> None:
    ksvc = build({**CPU, "runtime": {"protocol": "grpc"}})
    c = container(ksvc)
    assert c["ports"] == [{"name": "h2c", "containerPort": 9000}]
    assert env(ksvc)["ZEROSERVE_GRPC_PORT"] == "9000"
    assert env(build(CPU))["ZEROSERVE_GRPC_PORT"] == "0"  # REST-routed: no unreachable gRPC server
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_image_override_and_triton_runtime() -> None:
    c = container(build({**CPU, "runtime": {"name": "triton"}}))
    assert (c["image"], c["args"][0]) == ("registry.example/triton:1", "tritonserver")
    c = container(build({**CPU, "runtime": {"name": "triton", "image": "mine/triton:2"}}))
    assert c["image"] == "mine/triton:2"


def test_security_context_is_restricted_with_writable_emptydirs() -> None:
    ksvc = build(CPU)
    sc = container(ksvc)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in template(ksvc)["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(ksvc)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts[env(ksvc)["ZEROSERVE_CACHE_DIR"]]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Knative refuses a pod-level securityContext unless a feature flag is on; everything is per container.
    assert "securityContext" not in template(ksvc)["spec"]


def test_gpu_spec_gets_limits_placement_defaults_and_a_longer_progress_deadline() -> None:
    cpu = build(CPU)
    gpu = build({**CPU, "resources": {"cpu": "4", "memory": "16Gi", "gpu": {"count": 2}}})
    limits = container(gpu)["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert container(gpu)["resources"]["requests"] == limits
    assert template(gpu)["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert template(gpu)["spec"]["tolerations"] == SETTINGS.gpu_tolerations
    assert env(gpu)["ZEROSERVE_DEVICE"] == "gpu"
    deadline = "serving.knative.dev/progress-deadline"
    assert int(template(gpu)["metadata"]["annotations"][deadline].rstrip("s")) > int(
        template(cpu)["metadata"]["annotations"][deadline].rstrip("s")
    )
    assert "nodeSelector" not in template(cpu)["spec"] and "tolerations" not in template(cpu)["spec"]


def test_explicit_placement_wins_over_gpu_defaults() -> None:
    spec = {
        **CPU,
        "resources": {"gpu": {"count": 1, "resourceName": "amd.com/gpu"}},
        "nodeSelector": {"pool": "mi300"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists"}],
    }
    ksvc = build(spec)
    assert template(ksvc)["spec"]["nodeSelector"] == {"pool": "mi300"}
    assert template(ksvc)["spec"]["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists"}]
    assert container(ksvc)["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_pvc_model_is_mounted_read_only_and_read_as_a_file() -> None:
    ksvc = build({"model": {"uri": "pvc://models-claim/vision/mobilenet.onnx"}})
    volumes = {v["name"]: v for v in template(ksvc)["spec"]["volumes"]}
    assert volumes["model-pvc"]["persistentVolumeClaim"] == {"claimName": "models-claim", "readOnly": True}
    mount = next(m for m in container(ksvc)["volumeMounts"] if m["name"] == "model-pvc")
    assert mount["readOnly"] is True
    assert env(ksvc)["ZEROSERVE_MODEL_URI"] == f"file://{mount['mountPath']}/vision/mobilenet.onnx"


def test_a_cache_claim_replaces_the_pods_own_cache_and_is_writable() -> None:
    model = {"uri": "https://models.example/m.onnx", "sha256": "a" * 64}
    own = {v["name"]: v for v in template(build({"model": model}))["spec"]["volumes"]}
    assert own["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    ksvc = build({"model": {**model, "cache": {"claimName": "model-cache"}}})
    volumes = {v["name"]: v for v in template(ksvc)["spec"]["volumes"]}
    # Not readOnly: the first replica to download the model leaves it there for the next cold start.
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    mount = next(m for m in container(ksvc)["volumeMounts"] if m["name"] == "model-cache")
    assert mount["mountPath"] == env(ksvc)["ZEROSERVE_CACHE_DIR"] and not mount.get("readOnly")
    assert env(ksvc)["ZEROSERVE_MODEL_SHA256"] == "a" * 64


def test_the_knative_flags_a_spec_needs_are_named() -> None:
    assert required_features(build(CPU)) == ["kubernetes.podspec-volumes-emptydir"]
    pvc_model = build({"model": {"uri": "pvc://models-claim/m.onnx"}})
    assert "kubernetes.podspec-persistent-volume-claim" in required_features(pvc_model)
    assert "kubernetes.podspec-persistent-volume-write" not in required_features(pvc_model)
    cached = {"uri": "https://models.example/m.onnx", "sha256": "a" * 64, "cache": {"claimName": "c"}}
    assert {
        "kubernetes.podspec-persistent-volume-claim",
        "kubernetes.podspec-persistent-volume-write",
    } <= set(required_features(build({"model": cached})))


def test_secrets_reach_the_container_by_reference_only() -> None:
    spec = {
        "model": {"uri": "s3://b/m.onnx", "secretRef": {"name": "s3-creds"}},
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}},
        ],
    }
    c = container(build(spec))
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}} in c["env"]
    assert {"name": "LOG_LEVEL", "value": "debug"} in c["env"]


def test_labels_owner_reference_and_namespace() -> None:
    ksvc = build(CPU)
    assert ksvc["metadata"]["namespace"] == "ml" and ksvc["metadata"]["name"] == "digits"
    (ref,) = ksvc["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "name": "digits",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for labels in (ksvc["metadata"]["labels"], template(ksvc)["metadata"]["labels"]):
        assert labels["zeroserve.dev/modelservice"] == "digits"
        assert labels["app.kubernetes.io/managed-by"] == "zeroserve-operator"


def test_desired_hash_tracks_every_field_we_set() -> None:
    with_secret = build({**CPU, "model": {**CPU["model"], "secretRef": {"name": "creds"}}})
    without = build(CPU)
    key = "zeroserve.dev/desired-hash"
    assert with_secret["metadata"]["annotations"][key] != without["metadata"]["annotations"][key]
    assert build(CPU)["metadata"]["annotations"][key] == without["metadata"]["annotations"][key]


def test_no_service_account_token_unless_an_identity_is_asked_for() -> None:
    assert template(build(CPU))["spec"]["automountServiceAccountToken"] is False
    spec = template(build({**CPU, "serviceAccountName": "model-reader"}))["spec"]
    assert spec["serviceAccountName"] == "model-reader" and "automountServiceAccountToken" not in spec


def test_builder_is_pure() -> None:
    body = modelservice({**CPU, "resources": {"gpu": {"count": 1}}})
    before = copy.deepcopy(body)
    first = build_knative_service(body, SETTINGS)
    assert body == before
    assert build_knative_service(body, SETTINGS) == first


def test_builder_refuses_an_invalid_spec() -> None:
    with pytest.raises(ValueError, match="uri"):
        build({"model": {"uri": "ftp://nope/model.onnx"}})


def test_cluster_local_visibility_is_knatives_label_on_the_service_only() -> None:
    local = build({**CPU, "visibility": "cluster-local"})
    assert local["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    # On the Service, where Knative's route reads it; a label on the revision template would do nothing.
    assert "networking.knative.dev/visibility" not in template(local)["metadata"]["labels"]
    assert "networking.knative.dev/visibility" not in build(CPU)["metadata"]["labels"]
    assert (
        "networking.knative.dev/visibility"
        not in build({**CPU, "visibility": "external"})["metadata"]["labels"]
    )


def test_a_failing_runtime_puts_its_last_log_lines_in_the_pod_status() -> None:
    assert container(build(CPU))["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_gpu_specs_run_the_gpu_image_and_fallback_is_passed_only_when_allowed() -> None:
    settings = SETTINGS.model_copy(update={"onnx_gpu_image": "registry.example/onnx:1-gpu"})
    gpu = build({**CPU, "resources": {"gpu": {"count": 1}}}, settings)
    assert container(gpu)["image"] == "registry.example/onnx:1-gpu"
    assert env(gpu)["ZEROSERVE_DEVICE"] == "gpu" and "ZEROSERVE_ALLOW_CPU_FALLBACK" not in env(gpu)
    assert container(build(CPU, settings))["image"] == "registry.example/onnx:1"
    allowed = build({**CPU, "resources": {"gpu": {"count": 1, "allowCpuFallback": True}}}, settings)
    assert env(allowed)["ZEROSERVE_ALLOW_CPU_FALLBACK"] == "true"
    assert container(allowed)["image"] == "registry.example/onnx:1-gpu"
    mine = build({**CPU, "runtime": {"image": "mine/onnx:2"}, "resources": {"gpu": {"count": 1}}}, settings)
    assert container(mine)["image"] == "mine/onnx:2"
