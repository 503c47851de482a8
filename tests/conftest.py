"""Fixtures shared by the whole suite. The control plane is real: see tests/controlplane.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from controlplane import Binaries, ControlPlane, ControlPlaneError
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from runtimeproc import int_model, linear_model

_running: ControlPlane | None = None


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
def control_plane(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    global _running
    plane = ControlPlane(binaries, tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
    except ControlPlaneError as e:
        pytest.fail(f"could not start the test control plane:\n{e}", pytrace=False)
    _running = plane
    try:
        yield plane
    finally:
        _running = None
        plane.stop()


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
    if _running is not None and report.when == "call" and "control_plane" in item.fixturenames:
        dead = _running.dead_components()
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
