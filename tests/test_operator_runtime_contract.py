"""The contract between the operator and the runtime: the ZEROSERVE_* variables the Knative Service builder
writes are the settings the runtime reads, both ways. Both sides are read from the code itself (the
builder's output, the settings model), so a rename on either side fails here rather than in a pod."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import TypeAdapter
from zeroserve_operator.resources.knative import build_knative_service
from zeroserve_operator.settings import OperatorSettings
from zeroserve_runtime.settings import RuntimeSettings

PREFIX = RuntimeSettings.model_config["env_prefix"]

# Specs between them set every field of a ModelService that reaches the runtime container.
SPECS: dict[str, dict[str, Any]] = {
    "minimal": {"model": {"uri": "s3://models/digits.onnx"}},
    "everything": {
        "model": {"uri": "https://models.example/m.onnx", "sha256": "a" * 64},
        "runtime": {
            "protocol": "grpc",
            "threads": 2,
            "parallelInferences": 3,
            "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 5},
        },
        "resources": {"cpu": "2", "memory": "1Gi", "gpu": {"count": 1, "allowCpuFallback": True}},
        "scaling": {"containerConcurrency": 16},
        "timeoutSeconds": 90,
    },
    "pvc": {"model": {"uri": "pvc://models/vision/m.onnx"}},
}

# The runtime settings no ModelService field has a say in, each with why its default is right in a pod.
# Checked both ways below: each must still be a setting, and the builder must not write it.
LEFT_TO_THE_RUNTIME = {
    "host": "a pod listens on all its interfaces, the default",
    "max_request_bytes": "no ModelService field; the runtime's 64 MiB limit applies",
    "max_inflight_bytes": "a quarter of the container's memory limit (resources.memory), from its cgroup",
    "log_level": "no ModelService field; spec.env can set ZEROSERVE_LOG_LEVEL",
    "drain_delay_seconds": "no ModelService field; the runtime's 1 s lame duck suits Services and Knative",
    "batch_padding": "auto pads on the CUDA provider, where a GPU replica runs; spec.env can set "
    "ZEROSERVE_BATCH_PADDING",
    "cudnn_conv_algo_search": "onnxruntime's default; spec.env can set ZEROSERVE_CUDNN_CONV_ALGO_SEARCH",
}


def env_name(field: str) -> str:
    alias = RuntimeSettings.model_fields[field].validation_alias
    return alias.upper() if isinstance(alias, str) else (PREFIX + field).upper()


SETTING_OF = {env_name(field): field for field in RuntimeSettings.model_fields}


def runtime_env(spec: dict[str, Any]) -> dict[str, str]:
    body = {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-1"},
        "spec": spec,
    }
    ksvc = build_knative_service(body, OperatorSettings())
    (container,) = ksvc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if e["name"].upper().startswith(PREFIX.upper())}


def written_settings() -> set[str]:
    return {SETTING_OF[name] for spec in SPECS.values() for name in runtime_env(spec) if name in SETTING_OF}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_variable_the_operator_writes_is_a_runtime_setting_that_accepts_its_value(
    spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    written = runtime_env(spec)
    unknown = sorted(set(written) - set(SETTING_OF))
    assert not unknown, f"the operator writes {unknown}, which no field of RuntimeSettings reads"
    # The runtime, started with exactly this environment, takes every value.
    for name in [n for n in os.environ if n.upper().startswith(PREFIX.upper())]:
        monkeypatch.delenv(name)
    for name, value in written.items():
        monkeypatch.setenv(name, value)
    settings = RuntimeSettings()  # type: ignore[call-arg]  # model_uri comes from the environment
    assert {SETTING_OF[n] for n in written} <= settings.model_fields_set
    for name, value in written.items():
        field = RuntimeSettings.model_fields[SETTING_OF[name]]
        assert getattr(settings, SETTING_OF[name]) == TypeAdapter(field.annotation).validate_python(value)


def test_every_runtime_setting_a_modelservice_influences_is_written() -> None:
    settings = set(RuntimeSettings.model_fields)
    written = written_settings()
    assert set(LEFT_TO_THE_RUNTIME) <= settings, "LEFT_TO_THE_RUNTIME names a setting that no longer exists"
    assert not written & set(LEFT_TO_THE_RUNTIME), "the operator writes a setting listed as left alone"
    missing = sorted(settings - written - set(LEFT_TO_THE_RUNTIME))
    assert not missing, (
        f"the runtime reads {[env_name(m) for m in missing]}, which the operator never writes: write it "
        "from the ModelService, or add it to LEFT_TO_THE_RUNTIME with the reason"
    )
