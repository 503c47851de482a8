"""The Helm chart, with the pinned helm built from Go modules, against the real control plane. The RBAC it
grants is proven by running the operator with the chart's ServiceAccount token instead of admin."""

from __future__ import annotations

import json
import subprocess
import uuid
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
from zeroserve_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "zeroserve"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.35.4"


def helm(binaries: Binaries, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(binaries.helm), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(
    binaries: Binaries, *values: Path, namespace: str = "zeroserve", release: str = "zs"
) -> list[dict]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    out = helm(binaries, *args, *(f"--values={v}" for v in values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_template_needs_no_kube_version(binaries: Binaries) -> None:
    """The pinned helm's default capabilities are the Kubernetes version of the client-go it was built
    with, as upstream's build stamps them, so the chart's kubeVersion constraint passes without a flag."""
    result = helm(binaries, "template", "zs", str(CHART), check=False)
    assert result.returncode == 0, result.stderr
    assert by_kind([d for d in yaml.safe_load_all(result.stdout) if d], "Deployment")


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "defaults")
def test_helm_lint(binaries: Binaries, values: Path | None) -> None:
    out = helm(binaries, "lint", str(CHART), *([f"--values={values}"] if values else [])).stdout
    assert "0 chart(s) failed" in out


def test_defaults_render_a_restricted_single_replica_operator(binaries: Binaries) -> None:
    docs = render(binaries)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert "--all-namespaces" in container["args"]
    assert by_kind(docs, "Service") and not by_kind(docs, "ServiceMonitor")


def test_chart_env_is_what_the_operator_settings_read(
    binaries: Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(binaries, CHART / "ci" / "gpu-values.yaml")
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    for env in container["env"]:
        assert env["name"].removeprefix("ZEROSERVE_OPERATOR_").lower() in OperatorSettings.model_fields, env
        monkeypatch.setenv(env["name"], env["value"])
    settings = OperatorSettings()
    assert settings.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.gpu_tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert settings.gpu_progress_deadline == "2400s"


def _operator_env(docs: list[dict]) -> dict[str, str]:
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_gpu_specs_get_the_gpu_runtime_image_the_chart_names(binaries: Binaries) -> None:
    defaults = _operator_env(render(binaries))
    # The chart's default is the operator's own, so an install without values and a bare operator agree.
    assert defaults["ZEROSERVE_OPERATOR_ONNX_GPU_IMAGE"] == OperatorSettings().onnx_gpu_image
    assert defaults["ZEROSERVE_OPERATOR_ONNX_GPU_IMAGE"] != defaults["ZEROSERVE_OPERATOR_ONNX_IMAGE"]
    args = ["template", "zs", str(CHART), "--kube-version", KUBE_VERSION]
    out = helm(binaries, *args, "--set", "modelServiceDefaults.onnxGpuImage=registry.local/onnx:gpu").stdout
    env = _operator_env([d for d in yaml.safe_load_all(out) if d])
    assert env["ZEROSERVE_OPERATOR_ONNX_GPU_IMAGE"] == "registry.local/onnx:gpu"


def rules(docs: list[dict]) -> list[tuple[str, str, str]]:
    found = []
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            found.append((doc["kind"], f"{group}/{resource}", verb))
    return found


def test_rbac_grants_nothing_more_than_the_operator_needs(binaries: Binaries) -> None:
    granted = {(g, v) for _, g, v in rules(render(binaries))}
    assert granted == {
        ("apiextensions.k8s.io/customresourcedefinitions", "list"),
        ("apiextensions.k8s.io/customresourcedefinitions", "watch"),
        ("zeroserve.dev/modelservices", "get"),
        ("zeroserve.dev/modelservices", "list"),
        ("zeroserve.dev/modelservices", "watch"),
        ("zeroserve.dev/modelservices", "patch"),
        ("zeroserve.dev/modelservices/status", "get"),
        ("zeroserve.dev/modelservices/status", "patch"),
        ("serving.knative.dev/services", "get"),
        ("serving.knative.dev/services", "list"),
        ("serving.knative.dev/services", "watch"),
        ("serving.knative.dev/services", "create"),
        ("serving.knative.dev/services", "patch"),
        ("/events", "create"),
        ("/pods", "list"),
        ("/configmaps", "get"),
    }
    (features,) = [
        d for d in by_kind(render(binaries), "Role") if d["metadata"]["namespace"] == "knative-serving"
    ]
    assert features["rules"][0]["resourceNames"] == ["config-features"]


def test_namespaced_mode_uses_roles_in_the_watched_namespaces(binaries: Binaries) -> None:
    docs = render(binaries, CHART / "ci" / "namespaced-values.yaml")
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "Role")}
    assert {("team-a", "zs-zeroserve"), ("team-b", "zs-zeroserve")} <= roles
    (cluster_role,) = by_kind(docs, "ClusterRole")  # only what kopf needs is cluster-wide
    assert cluster_role["metadata"]["name"] == "zs-zeroserve-zeroserve-kopf"  # release namespace in the name
    assert {r["resources"][0] for r in cluster_role["rules"]} == {"customresourcedefinitions", "namespaces"}
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"]


def test_servicemonitor_behind_its_flag(binaries: Binaries) -> None:
    (monitor,) = by_kind(render(binaries, CHART / "ci" / "servicemonitor-values.yaml"), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # honorLabels: the per-ModelService series keep the ModelService's namespace, not the operator's.
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s", "honorLabels": True}]


def test_crd_comes_from_crds_folder_not_a_copy() -> None:
    link = CHART / "crds" / "modelservices.zeroserve.dev.yaml"
    assert (
        link.is_symlink() and link.resolve() == (ROOT / "crds" / "modelservices.zeroserve.dev.yaml").resolve()
    )


def test_knative_features_access_can_be_left_out(binaries: Binaries) -> None:
    docs = render(binaries, CHART / "ci" / "cluster-values.yaml")
    assert any(d["metadata"].get("namespace") == "knative-serving" for d in docs)
    out = helm(
        binaries,
        "template",
        "zs",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "knative.readFeatures=false",
    ).stdout
    assert not [
        d for d in yaml.safe_load_all(out) if d and d["metadata"].get("namespace") == "knative-serving"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "livenessPort=9090"], "livenessPort and metrics.port must differ"),
        (["--set", "watch.namespaces[0]=team-a"], "watch.namespaces is only for watch.mode=namespaced"),
    ],
    ids=["port clash", "namespaces in cluster mode"],
)
def test_contradictory_values_fail_with_a_reason(binaries: Binaries, args: list[str], message: str) -> None:
    result = helm(binaries, "template", "zs", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0 and message in result.stderr


BAD_VALUES = [
    (["--set", "replicaCount=2"], "replicaCount"),
    (["--set", "watch.mode=galaxy"], "/watch/mode"),
    (["--set", "surprise=1"], "surprise"),
    (["--set", "metrics.port=0"], "/metrics/port"),
    (["--set", "modelServiceDefaults.gpu.progressDeadline=soon"], "progressDeadline"),
    (["--set", "modelServiceDefaults.onnxGpuImage="], "onnxGpuImage"),
    (["--set", "watch.namespaces[0]=Not_A_Namespace"], "namespaces"),
]


@pytest.mark.parametrize(("args", "field"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_values_are_rejected_by_the_schema(binaries: Binaries, args: list[str], field: str) -> None:
    result = helm(binaries, "template", "zs", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert field in result.stderr


@pytest.mark.parametrize("values", [None, *SCENARIOS], ids=lambda v: v.name if v else "defaults")
def test_every_scenario_renders_one_operator(binaries: Binaries, values: Path | None) -> None:
    docs = render(binaries, *([values] if values else []))
    assert len(by_kind(docs, "Deployment")) == 1 and by_kind(docs, "ServiceAccount")


# The ServiceMonitor scenario needs prometheus-operator's CRD, which this control plane does not have.
APPLIED = [v for v in SCENARIOS if v.name != "servicemonitor-values.yaml"]


@pytest.mark.parametrize("values", [None, *APPLIED], ids=lambda v: v.name if v else "defaults")
def test_rendered_manifests_apply_to_the_api_server(
    control_plane: ControlPlane, binaries: Binaries, tmp_path: Path, values: Path | None
) -> None:
    docs = render(binaries, *([values] if values else []), namespace=f"zs-{uuid.uuid4().hex[:8]}")
    out = apply_rendered(control_plane, docs, tmp_path)
    assert "deployment.apps/zs-zeroserve serverside-applied" in out


def apply_rendered(plane: ControlPlane, docs: list[dict], tmp_path: Path) -> str:
    """Server-side apply rendered manifests, creating the namespaces they live in first."""
    for ns in {"knative-serving"} | {d["metadata"].get("namespace") for d in docs} - {None}:
        plane.kubectl("create", "namespace", ns, check=False)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest)).stdout


async def chart_identity(
    plane: ControlPlane, binaries: Binaries, api_client: aclient.ApiClient, tmp_path: Path
) -> tuple[str, Path]:
    """Install the chart's objects in a fresh release namespace; return it and a kubeconfig that holds
    a token of the chart's ServiceAccount instead of the admin's."""
    release_ns = f"zs-{uuid.uuid4().hex[:8]}"
    apply_rendered(plane, render(binaries, namespace=release_ns), tmp_path)
    token = (
        await aclient.CoreV1Api(api_client).create_namespaced_service_account_token(
            "zs-zeroserve",
            release_ns,
            aclient.AuthenticationV1TokenRequest(spec=aclient.V1TokenRequestSpec(audiences=[])),
        )
    ).status.token
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path = tmp_path / "sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return release_ns, path


async def test_operator_reconciles_with_only_the_charts_rbac(
    control_plane: ControlPlane,
    binaries: Binaries,
    modelservice_crd: str,
    api_client: aclient.ApiClient,
    tmp_path: Path,
) -> None:
    models_ns = f"ml-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", models_ns)
    _, kubeconfig = await chart_identity(control_plane, binaries, api_client, tmp_path)

    proc = OperatorProcess(control_plane, tmp_path / "operator.log", [])
    proc.env["KUBECONFIG"] = str(kubeconfig)
    proc.env["ZEROSERVE_OPERATOR_RETRY_DELAY"] = "1"
    proc.start()
    try:
        custom = aclient.CustomObjectsApi(api_client)
        body = yaml.safe_load((ROOT / "examples" / "modelservice-cpu.yaml").read_text())
        await custom.create_namespaced_custom_object(
            "zeroserve.dev", "v1alpha1", models_ns, "modelservices", body
        )

        async def reconciled() -> dict[str, Any] | None:
            ms = await custom.get_namespaced_custom_object(
                "zeroserve.dev", "v1alpha1", models_ns, "modelservices", "efficientnet"
            )
            return ms if (ms.get("status") or {}).get("observedGeneration") == 1 else None

        ms = await eventually(reconciled, within=60, what="status written by the chart's identity")
        assert {c["type"]: c["status"] for c in ms["status"]["conditions"]}["SpecValid"] == "True"
        ksvc = await custom.get_namespaced_custom_object(
            "serving.knative.dev", "v1", models_ns, "services", "efficientnet"
        )
        assert ksvc["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"]

        async def event_posted() -> bool:
            events = await aclient.CoreV1Api(api_client).list_namespaced_event(models_ns)
            return any(e.reason == "KnativeServiceCreated" for e in events.items)

        await eventually(event_posted, within=30, what="an Event posted by the chart's identity")
        # Not one refusal on the way (a bare "403" could be a timestamp's milliseconds).
        assert "Forbidden" not in proc.log() and "(403)" not in proc.log()
    finally:
        proc.stop()
        print(proc.tail())


async def test_charts_identity_cannot_read_secrets_or_touch_deployments(
    control_plane: ControlPlane,
    binaries: Binaries,
    modelservice_crd: str,
    api_client: aclient.ApiClient,
    tmp_path: Path,
) -> None:
    release_ns, kubeconfig = await chart_identity(control_plane, binaries, api_client, tmp_path)

    as_operator = await aconfig.new_client_from_config(config_file=str(kubeconfig))
    async with as_operator:
        core, apps = aclient.CoreV1Api(as_operator), aclient.AppsV1Api(as_operator)
        refused = [
            core.list_secret_for_all_namespaces(),
            core.read_namespaced_secret("anything", release_ns),
            apps.list_deployment_for_all_namespaces(),
            apps.delete_namespaced_deployment("zs-zeroserve", release_ns),
            core.list_namespaced_config_map("knative-serving"),  # only config-features, by name
        ]
        for call in refused:
            with pytest.raises(ApiException) as info:
                await call
            assert info.value.status == 403, info.value.body
            assert "zs-zeroserve" in json.loads(info.value.body)["message"]
        # ...while what it needs is allowed.
        await aclient.CustomObjectsApi(as_operator).list_cluster_custom_object(
            "zeroserve.dev", "v1alpha1", "modelservices"
        )


def _zeroserve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    exe = str(Path(sys.executable).parent / "zeroserve")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_zeroserve_install_upgrade_and_uninstall(control_plane: ControlPlane, binaries: Binaries) -> None:
    ns = f"zs-{uuid.uuid4().hex[:8]}"
    env = {"KUBECONFIG": str(control_plane.kubeconfig), "ZEROSERVE_HELM": str(binaries.helm)}
    control_plane.kubectl("create", "namespace", "knative-serving", check=False)

    first = _zeroserve("install", "--namespace", ns, env=env)
    assert first.returncode == 0, first.stderr
    assert "revision 1: deployed" in first.stdout and "==> installing or upgrading" in first.stdout
    deployment = json.loads(
        control_plane.kubectl("get", "deployment", "zeroserve", "-n", ns, "-o", "json").stdout
    )
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    second = _zeroserve(
        "install", "--namespace", ns, "--values", str(CHART / "ci" / "gpu-values.yaml"), env=env
    )
    assert second.returncode == 0, second.stderr
    assert "revision 2: deployed" in second.stdout
    deployment = json.loads(
        control_plane.kubectl("get", "deployment", "zeroserve", "-n", ns, "-o", "json").stdout
    )
    env_vars = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env_vars["ZEROSERVE_OPERATOR_GPU_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}

    bad = _zeroserve("install", "--namespace", ns, "--values", str(CHART / "values.schema.json"), env=env)
    assert bad.returncode == 1 and "values don't meet the specifications" in bad.stderr

    gone = _zeroserve("uninstall", "--namespace", ns, env=env)
    assert gone.returncode == 0, gone.stderr
    left = control_plane.kubectl("get", "deployment", "zeroserve", "-n", ns, check=False)
    assert left.returncode != 0 and "NotFound" in left.stderr
    # Helm never deletes CRDs: ModelServices survive an uninstall.
    assert control_plane.kubectl("get", "crd", "modelservices.zeroserve.dev").returncode == 0


def test_installing_where_knative_serving_is_missing_says_so(
    control_plane: ControlPlane, binaries: Binaries
) -> None:
    ns = f"zs-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            str(binaries.helm),
            "install",
            "zeroserve",
            str(CHART),
            "--namespace",
            ns,
            "--create-namespace",
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--set=knative.namespace=knative-nowhere",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert 'Knative Serving is missing: this cluster has no namespace "knative-nowhere"' in result.stderr
    assert "not found" not in result.stderr, result.stderr
    # Nothing was installed: the release failed before any object was created.
    left = control_plane.kubectl("get", "deployment", "zeroserve", "-n", ns, check=False)
    assert left.returncode != 0 and "NotFound" in left.stderr
