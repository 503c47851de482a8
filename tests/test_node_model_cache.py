"""The opt-in node model cache through the real operator process and the test control plane: the Knative
flag it needs is named on the ModelService until the admin enables it, then the Knative Service mounts the
node's folder as the runtime's cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controlplane import ControlPlane
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio.client.exceptions import ApiException
from operatorproc import OperatorProcess
from waiting import eventually
from zeroserve_operator import api

MS = (api.GROUP, api.VERSION)
FLAG = "kubernetes.podspec-volumes-hostpath"
HOST_PATH = "/var/lib/zeroserve/models"


async def test_host_path_cache_waits_for_knatives_flag_then_mounts_the_node_folder(
    control_plane: ControlPlane,
    modelservice_crd: str,
    namespace: str,
    api_client: aclient.ApiClient,
    tmp_path: Path,
) -> None:
    core = aclient.CoreV1Api(api_client)
    custom = aclient.CustomObjectsApi(api_client)
    try:
        await core.create_namespace(
            aclient.V1Namespace(metadata=aclient.V1ObjectMeta(name="knative-serving"))
        )
    except ApiException as e:
        assert e.status == 409
    # Knative's shipped config-features: emptyDir on, hostPath off.
    features = aclient.V1ConfigMap(
        metadata=aclient.V1ObjectMeta(name="config-features"),
        data={"kubernetes.podspec-volumes-emptydir": "enabled"},
    )
    await core.create_namespaced_config_map("knative-serving", features)
    env = {"ZEROSERVE_OPERATOR_RETRY_DELAY": "1", "ZEROSERVE_OPERATOR_MODEL_CACHE_HOST_PATH": HOST_PATH}
    operator = OperatorProcess(control_plane, tmp_path / "operator.log", [namespace], env=env)
    body = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": "digits"},
        "spec": {"model": {"uri": "https://models.example/digits.onnx", "sha256": "ab" * 32}},
    }

    async def condition(type_: str) -> dict[str, Any] | None:
        ms = await custom.get_namespaced_custom_object(*MS, namespace, api.PLURAL, "digits")
        return next((c for c in (ms.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)

    async def ksvc() -> dict[str, Any] | None:
        try:
            return await custom.get_namespaced_custom_object(
                "serving.knative.dev", "v1", namespace, "services", "digits"
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    try:
        with operator:
            await custom.create_namespaced_custom_object(*MS, namespace, api.PLURAL, body)

            async def blocked() -> dict[str, Any] | None:
                c = await condition("KnativeFeaturesEnabled")
                return c if c and c["status"] == "False" else None

            cond = await eventually(blocked, within=30, what="KnativeFeaturesEnabled=False")
            assert FLAG in cond["message"] and "config-features" in cond["message"]
            ready = await condition("Ready")
            assert ready is not None and ready["reason"] == "FeatureDisabled"
            assert await ksvc() is None  # Knative's webhook would refuse the hostPath

            await core.patch_namespaced_config_map(
                "config-features", "knative-serving", {"data": {FLAG: "enabled"}}
            )
            built = await eventually(ksvc, within=30, what="the Knative Service")
            pod = built["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            cache_dir = next(e["value"] for e in container["env"] if e["name"] == "ZEROSERVE_CACHE_DIR")
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache_dir]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert volume["hostPath"] == {"path": HOST_PATH, "type": "Directory"}
        print(operator.tail())
    finally:
        await core.delete_namespaced_config_map("config-features", "knative-serving")
