"""Fixtures shared by the whole suite. The control plane is real: see tests/controlplane.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from controlplane import Binaries, ControlPlane, ControlPlaneError, default_cache_dir
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from node import Images, NodeError
from runtimeproc import int_model, linear_model

_running: list[ControlPlane] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_node: starts and stops a test node of its own (run first)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start and stop a node of their own run before the session's node exists: one node per
    machine at a time."""
    items.sort(key=lambda item: item.get_closest_marker("own_node") is None)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny ONNX models the runtime and function tests serve: FP32 linear, INT64 ints."""
    d = tmp_path_factory.mktemp("models")
    return {"linear": linear_model(d / "linear.onnx"), "ints": int_model(d / "ints.onnx")}


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The pinned, built binaries. Missing ones fail the test with the command that builds them."""
    try:
        return Binaries.from_cache()
    except ControlPlaneError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def images() -> Images:
    """The locally built images. Missing ones fail the test with the command that builds them."""
    try:
        return Images.from_cache(default_cache_dir())
    except NodeError as e:
        pytest.fail(str(e), pytrace=False)


def _running_plane(plane: ControlPlane) -> Iterator[ControlPlane]:
    try:
        plane.start()
    except (ControlPlaneError, NodeError) as e:
        pytest.fail(f"could not start the test cluster:\n{e}", pytrace=False)
    _running.append(plane)
    try:
        yield plane
    finally:
        _running.remove(plane)
        plane.stop()


@pytest.fixture(scope="session")
def control_plane(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The fast control plane: no node, no pods."""
    yield from _running_plane(ControlPlane(binaries, tmp_path_factory.mktemp("controlplane")))


@pytest.fixture(scope="session")
def node_cluster(
    binaries: Binaries, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A control plane with kube-scheduler and one real node (containerd, kubelet, kube-proxy) that runs
    pods from the locally built images."""
    plane = ControlPlane(binaries, tmp_path_factory.mktemp("nodecluster"), images=images)
    yield from _running_plane(plane)


@pytest.fixture
def ns(node_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace on the cluster with a node, deleted (without waiting) afterwards."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    node_cluster.kubectl("create", "namespace", name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def knative_cluster(node_cluster: ControlPlane) -> ControlPlane:
    """The node cluster with Knative Serving's own components, CoreDNS and Traefik running as pods."""
    import knative

    try:
        node_cluster.timings.update({f"knative:{k}": v for k, v in knative.install(node_cluster).items()})
    except (knative.KnativeError, NodeError, ControlPlaneError) as e:
        pytest.fail(f"could not install Knative on the test node:\n{e}", pytrace=False)
    return node_cluster


@pytest.fixture(scope="session")
def modelservice_crd(control_plane: ControlPlane) -> str:
    """The ModelService CRD from crds/, installed the way a user would."""
    from zeroserve_operator import crd

    control_plane.apply_crds([crd.CRD_FILE])
    return crd.CRD_NAME


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A component that died during a test fails that test and shows the component's last log lines."""
    report = yield
    fixtures = {"control_plane", "node_cluster"} & set(item.fixturenames)
    if report.when == "call" and fixtures:
        dead = [c for plane in _running for c in plane.dead_components()]
        if dead:
            report.sections.append(("control plane", ControlPlane.describe_dead(dead)))
            if report.passed:
                report.outcome = "failed"
                report.longrepr = "a control-plane component died during this test:\n" + (
                    ControlPlane.describe_dead(dead)
                )
    return report


@pytest.fixture
async def api_client(control_plane: ControlPlane) -> AsyncIterator[aclient.ApiClient]:
    client = await aconfig.new_client_from_config(config_file=str(control_plane.kubeconfig))
    async with client:
        yield client


@pytest.fixture
async def namespace(api_client: aclient.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace per test, deleted (through the real namespace controller) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = aclient.CoreV1Api(api_client)
    await core.create_namespace(aclient.V1Namespace(metadata=aclient.V1ObjectMeta(name=name)))
    yield name
    await core.delete_namespace(name)


@pytest.fixture(scope="module")
def chart_operator(knative_cluster: ControlPlane) -> Iterator[str]:
    """The operator, installed from the chart as a user would, watching every namespace; its Deployment."""
    from release import OPERATOR_NAMESPACE, install_operator, uninstall

    deployment = install_operator(knative_cluster, "zeroserve", OPERATOR_NAMESPACE)
    yield deployment
    uninstall(knative_cluster, "zeroserve", OPERATOR_NAMESPACE)


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """EfficientNet-Lite0 from ../shared/models, served over HTTP on the node's bridge."""
    from modelhost import SHARED_MODELS, serve_models

    with serve_models(SHARED_MODELS) as base:
        yield f"{base}/efficientnet-lite0.onnx"
