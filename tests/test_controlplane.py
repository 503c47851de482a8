"""The test control plane is real: garbage collection, Knative CRDs, RBAC and schema validation happen in
the real kube-apiserver and kube-controller-manager, not in a fake."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from controlplane import Binaries, ControlPlane, ControlPlaneError, read_versions
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio.client.exceptions import ApiException
from waiting import eventually

KNATIVE = ("serving.knative.dev", "v1", "services")


def knative_service(name: str, **spec_overrides: object) -> dict:
    template_spec = {
        "containerConcurrency": 4,
        "timeoutSeconds": 120,
        "containers": [{"image": "ghcr.io/example/model-server:1.0", "ports": [{"containerPort": 8080}]}],
    }
    template_spec.update(spec_overrides)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                "spec": template_spec,
            }
        },
    }


def test_binaries_report_the_pinned_versions(binaries: Binaries) -> None:
    pins = read_versions()
    out = subprocess.run([binaries.kube_apiserver, "--version"], capture_output=True, text=True).stdout
    assert out.strip() == f"Kubernetes {pins['K8S_VERSION']}"
    out = subprocess.run(
        [binaries.kube_controller_manager, "--version"], capture_output=True, text=True
    ).stdout
    assert out.strip() == f"Kubernetes {pins['K8S_VERSION']}"
    out = subprocess.run([binaries.etcd, "--version"], capture_output=True, text=True).stdout
    assert f"etcd Version: {pins['ETCD_VERSION'].removeprefix('v')}" in out
    out = subprocess.run(
        [binaries.helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True
    ).stdout
    assert out.strip() == pins["HELM_VERSION"]


async def test_server_reports_pinned_version(api_client: aclient.ApiClient) -> None:
    info = await aclient.VersionApi(api_client).get_code()
    assert info.git_version == read_versions()["K8S_VERSION"]


async def test_owned_configmap_is_garbage_collected(api_client: aclient.ApiClient, namespace: str) -> None:
    core = aclient.CoreV1Api(api_client)
    owner = await core.create_namespaced_config_map(
        namespace, aclient.V1ConfigMap(metadata=aclient.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    ref = aclient.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    await core.create_namespaced_config_map(
        namespace,
        aclient.V1ConfigMap(metadata=aclient.V1ObjectMeta(name="owned", owner_references=[ref])),
    )
    await core.create_namespaced_config_map(
        namespace, aclient.V1ConfigMap(metadata=aclient.V1ObjectMeta(name="bystander"))
    )

    await core.delete_namespaced_config_map("owner", namespace)

    async def only_bystander_left() -> bool:
        items = (await core.list_namespaced_config_map(namespace)).items
        return {cm.metadata.name for cm in items} - {"kube-root-ca.crt"} == {"bystander"}

    await eventually(only_bystander_left, within=60, what="the owned ConfigMap to be collected")


async def test_knative_service_round_trip(api_client: aclient.ApiClient, namespace: str) -> None:
    crd = await aclient.ApiextensionsV1Api(api_client).read_custom_resource_definition(
        "services.serving.knative.dev"
    )
    assert crd.metadata.labels["app.kubernetes.io/name"] == "knative-serving"
    custom = aclient.CustomObjectsApi(api_client)
    await custom.create_namespaced_custom_object(*KNATIVE[:2], namespace, KNATIVE[2], knative_service("echo"))

    got = await custom.get_namespaced_custom_object(*KNATIVE[:2], namespace, KNATIVE[2], "echo")

    template = got["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    assert template["spec"]["containerConcurrency"] == 4
    assert template["spec"]["timeoutSeconds"] == 120
    assert template["spec"]["containers"][0]["image"] == "ghcr.io/example/model-server:1.0"
    assert got["metadata"]["uid"] and got["metadata"]["generation"] == 1


async def test_schema_rejects_wrong_types_with_the_servers_message(
    api_client: aclient.ApiClient, namespace: str
) -> None:
    custom = aclient.CustomObjectsApi(api_client)
    bad = knative_service("bad", containerConcurrency="lots")

    with pytest.raises(ApiException) as info:
        await custom.create_namespaced_custom_object(*KNATIVE[:2], namespace, KNATIVE[2], bad)

    assert info.value.status == 422
    assert "spec.template.spec.containerConcurrency" in info.value.body
    assert "must be of type integer" in info.value.body


async def test_schema_prunes_unknown_fields(api_client: aclient.ApiClient, namespace: str) -> None:
    custom = aclient.CustomObjectsApi(api_client)
    body = knative_service("pruned")
    body["spec"]["template"]["spec"]["notAKnativeField"] = {"x": 1}

    await custom.create_namespaced_custom_object(*KNATIVE[:2], namespace, KNATIVE[2], body)
    got = await custom.get_namespaced_custom_object(*KNATIVE[:2], namespace, KNATIVE[2], "pruned")

    assert "notAKnativeField" not in got["spec"]["template"]["spec"]
    assert got["spec"]["template"]["spec"]["containerConcurrency"] == 4


async def test_rbac_refuses_a_serviceaccount_until_a_role_allows_it(
    api_client: aclient.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    core = aclient.CoreV1Api(api_client)
    await core.create_namespaced_service_account(
        namespace, aclient.V1ServiceAccount(metadata=aclient.V1ObjectMeta(name="nobody"))
    )
    token = (
        await core.create_namespaced_service_account_token(
            "nobody",
            namespace,
            aclient.AuthenticationV1TokenRequest(spec=aclient.V1TokenRequestSpec(audiences=[])),
        )
    ).status.token

    config = aclient.Configuration(host=control_plane.server)
    config.ssl_ca_cert = str(control_plane.ca_file)
    config.api_key = {"BearerToken": token}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    async with aclient.ApiClient(config) as as_nobody:
        with pytest.raises(ApiException) as info:
            await aclient.CoreV1Api(as_nobody).list_namespaced_config_map(namespace)
        assert info.value.status == 403
        message = json.loads(info.value.body)["message"]
        assert f'User "system:serviceaccount:{namespace}:nobody" cannot list' in message, message

        # The same token passes once RBAC grants it, so the 403 above came from RBAC, not from a bad token.
        rbac = aclient.RbacAuthorizationV1Api(api_client)
        await rbac.create_namespaced_role(
            namespace,
            aclient.V1Role(
                metadata=aclient.V1ObjectMeta(name="read-configmaps"),
                rules=[aclient.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])],
            ),
        )
        await rbac.create_namespaced_role_binding(
            namespace,
            aclient.V1RoleBinding(
                metadata=aclient.V1ObjectMeta(name="nobody-reads"),
                role_ref=aclient.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
                ),
                subjects=[aclient.RbacV1Subject(kind="ServiceAccount", name="nobody", namespace=namespace)],
            ),
        )

        async def allowed() -> bool:
            try:
                await aclient.CoreV1Api(as_nobody).list_namespaced_config_map(namespace)
                return True
            except ApiException as e:
                assert e.status == 403
                return False

        await eventually(allowed, within=30, what="RBAC to allow the bound ServiceAccount")
        with pytest.raises(ApiException) as info:
            await aclient.CoreV1Api(as_nobody).list_namespaced_secret(namespace)
        assert info.value.status == 403


async def test_namespace_controller_empties_and_removes_namespaces(api_client: aclient.ApiClient) -> None:
    core = aclient.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    await core.create_namespace(aclient.V1Namespace(metadata=aclient.V1ObjectMeta(name=name)))
    await core.create_namespaced_config_map(
        name, aclient.V1ConfigMap(metadata=aclient.V1ObjectMeta(name="x"))
    )

    await core.delete_namespace(name)

    async def gone() -> bool:
        try:
            await core.read_namespace(name)
            return False
        except ApiException as e:
            return e.status == 404

    await eventually(gone, within=60, what=f"namespace {name} to be finalized")


def test_missing_binaries_fail_naming_them_and_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError) as info:
        Binaries.from_cache(cache_dir=tmp_path)

    message = str(info.value)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm"):
        assert f"{name} " in message
    assert "hack/build-control-plane.sh" in message
    assert "Knative Serving CRDs" in message


def test_stale_binary_is_reported_against_the_pin(binaries: Binaries, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "bin").mkdir(parents=True)
    for path in (
        binaries.etcd,
        binaries.kube_apiserver,
        binaries.kube_controller_manager,
        binaries.kubectl,
        binaries.helm,
    ):
        (cache / "bin" / path.name).symlink_to(path)
    (cache / "knative-serving-crds").symlink_to(binaries.knative_crds.resolve())
    pins = dict(binaries.versions, K8S_VERSION="v1.99.0")

    with pytest.raises(
        ControlPlaneError,
        match=r"kube-apiserver .* reports 'Kubernetes v1\.\d+\.\d+', but v1\.99\.0 is pinned",
    ):
        Binaries.from_cache(cache_dir=cache, versions=pins)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_dead_component_is_reported_and_teardown_leaves_nothing(binaries: Binaries, tmp_path: Path) -> None:
    plane = ControlPlane(binaries, tmp_path / "plane", install_knative=False)
    with plane:
        pids = plane.pids()
        port = int(plane.server.rsplit(":", 1)[1])
        assert len(pids) == 3 and _listening(port)
        plane.check_alive()

        kcm = plane.component("kube-controller-manager")
        os.killpg(kcm.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        kcm.process.wait(timeout=10)  # type: ignore[union-attr]
        with pytest.raises(ControlPlaneError) as info:
            plane.check_alive()
        assert "kube-controller-manager exited with status -9" in str(info.value)
        assert "last log lines" in str(info.value) and len(str(info.value).splitlines()) > 3

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not _listening(port)
