"""The ModelService CRD in the real API server: defaults applied, bad specs refused at admission."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio.client.exceptions import ApiException
from test_crd import EXAMPLES
from zeroserve_operator import api

MS = (api.GROUP, api.VERSION)


def ms(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


VALID = {"model": {"uri": "s3://bucket/model.onnx"}}


def with_(path: str, value: Any, base: dict[str, Any] = VALID) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    node = spec
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return spec


# (what is wrong, spec, text the API server's message must contain: the field it names)
INVALID = [
    (
        "min > max",
        with_("scaling.maxReplicas", 2, with_("scaling.minReplicas", 3)),
        "spec.scaling.maxReplicas",
    ),
    ("negative GPU", with_("resources.gpu", {"count": -1}), "spec.resources.gpu.count"),
    ("zero GPU", with_("resources.gpu", {"count": 0}), "spec.resources.gpu.count"),
    ("unknown runtime", with_("runtime.name", "tensorflow"), "spec.runtime.name"),
    ("bad URI scheme", with_("model.uri", "ftp://host/model.onnx"), "spec.model.uri"),
    ("no model", {"scaling": {"maxReplicas": 2}}, "spec.model"),
    (
        "containerConcurrency > 1000",
        with_("scaling.containerConcurrency", 1001),
        "spec.scaling.containerConcurrency",
    ),
    ("negative minReplicas", with_("scaling.minReplicas", -1), "spec.scaling.minReplicas"),
    ("unknown metric", with_("scaling.metric", "cpu"), "spec.scaling.metric"),
    ("window under 6s", with_("scaling.window", "5s"), "spec.scaling.window"),
    ("window not a duration", with_("scaling.window", "soon"), "spec.scaling.window"),
    (
        "initialScale > max",
        with_("scaling.initialScale", 9, with_("scaling.maxReplicas", 3)),
        "spec.scaling.initialScale",
    ),
    ("bad sha256", with_("model.sha256", "xyz"), "spec.model.sha256"),
    ("negative cpu", with_("resources.cpu", "-1"), "spec.resources.cpu"),
    ("timeout 0", with_("timeoutSeconds", 0), "spec.timeoutSeconds"),
    (
        "queue delay without batching",
        with_("runtime.batching", {"maxQueueDelayMs": 5}),
        "spec.runtime.batching.maxQueueDelayMs",
    ),
    ("format not onnx", with_("model.format", "savedmodel"), "spec.model.format"),
    ("pvc without path", with_("model.uri", "pvc://claim"), "spec.model.uri"),
    ("cache without sha256", with_("model.cache", {"claimName": "models"}), "spec.model.cache"),
    (
        "cache of a pvc model",
        with_("model", {"uri": "pvc://claim/m.onnx", "sha256": "a" * 64, "cache": {"claimName": "models"}}),
        "spec.model.cache",
    ),
    ("cache claim not a name", with_("model.cache", {"claimName": "Models/x"}), "spec.model.cache.claimName"),
    ("threads on triton", with_("runtime", {"name": "triton", "threads": 4}), "spec.runtime.threads"),
    (
        "tensorrt on onnx",
        with_("runtime.tensorrt", {}, with_("resources.gpu", {"count": 1})),
        "spec.runtime.tensorrt",
    ),
    ("tensorrt without a gpu", with_("runtime", {"name": "triton", "tensorrt": {}}), "spec.runtime.tensorrt"),
    (
        "tensorrt precision",
        with_("runtime", {"name": "triton", "tensorrt": {"precision": "INT4"}}),
        "spec.runtime.tensorrt.precision",
    ),
    (
        "cpu fallback on triton",
        with_("runtime.name", "triton", with_("resources.gpu", {"count": 1, "allowCpuFallback": True})),
        "spec.resources.gpu.allowCpuFallback",
    ),
    ("parallel inferences 0", with_("runtime.parallelInferences", 0), "spec.runtime.parallelInferences"),
    (
        "env value and valueFrom",
        with_("env", [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.env[0]",
    ),
]


@pytest.mark.parametrize(("problem", "spec", "field"), INVALID, ids=[i[0] for i in INVALID])
async def test_invalid_modelservice_is_refused_naming_the_field(
    modelservice_crd: str, api_client: aclient.ApiClient, namespace: str, problem: str, spec: dict, field: str
) -> None:
    custom = aclient.CustomObjectsApi(api_client)
    with pytest.raises(ApiException) as info:
        await custom.create_namespaced_custom_object(*MS, namespace, api.PLURAL, ms("bad", spec))
    assert info.value.status == 422, info.value.body
    assert field in info.value.body, f"{problem}: {info.value.body}"


async def test_name_that_cannot_be_a_knative_service_is_refused(
    modelservice_crd: str, api_client: aclient.ApiClient, namespace: str
) -> None:
    custom = aclient.CustomObjectsApi(api_client)
    for name in ("1model", "a" * 58, "my.model"):
        with pytest.raises(ApiException) as info:
            await custom.create_namespaced_custom_object(*MS, namespace, api.PLURAL, ms(name, VALID))
        assert info.value.status == 422 and "metadata.name" in info.value.body


async def test_defaults_are_applied_by_the_api_server(
    modelservice_crd: str, api_client: aclient.ApiClient, namespace: str
) -> None:
    custom = aclient.CustomObjectsApi(api_client)
    created = await custom.create_namespaced_custom_object(*MS, namespace, api.PLURAL, ms("defaults", VALID))
    spec = created["spec"]
    assert spec["scaling"]["minReplicas"] == 0
    assert spec["scaling"]["metric"] == "concurrency"
    assert spec["runtime"] == {"name": "onnx", "protocol": "rest"}
    assert spec["model"]["format"] == "onnx"
    assert spec["timeoutSeconds"] == 300
    # What the server stored is exactly what the pydantic model accepts and defaults to.
    assert api.ModelServiceSpec.model_validate(spec).model_dump(by_alias=True, exclude_none=True) == spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_apply_with_kubectl(modelservice_crd: str, control_plane, namespace: str, path) -> None:  # type: ignore[no-untyped-def]
    out = control_plane.kubectl("apply", "--namespace", namespace, "--filename", str(path)).stdout
    assert "modelservice.zeroserve.dev/" in out and "created" in out


def test_kubectl_explain_shows_field_descriptions(modelservice_crd: str, control_plane) -> None:  # type: ignore[no-untyped-def]
    out = control_plane.kubectl("explain", "modelservice.spec.scaling").stdout
    assert "minReplicas" in out and "scales to zero" in out
    assert "Autoscaling, scale to zero by default." in out
