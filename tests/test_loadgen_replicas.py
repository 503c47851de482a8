"""`zeroserve bench` records each target's replica count from the Kubernetes API while it runs: real locust
against a real runtime, with `replicas:` pointing at pods on the real test API server. There is no kubelet
in the fast control plane, so the test plays kubelet's part through the API (creating pods, setting their
Ready condition with the status subresource, deleting them), which is exactly what the watch sees on a
real cluster."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane, free_port
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families
from runtimeproc import RuntimeProcess, linear_model
from waiting import eventually
from zeroserve_loadgen.targets import BenchFileError, load_bench_file

ZEROSERVE = str(Path(sys.executable).parent / "zeroserve")
PAYLOAD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
SELECTOR = "serving.knative.dev/service=effnet"
LABELS = {"serving.knative.dev/service": "effnet"}
FINALIZER = "zeroserve.dev/test-holds-the-pod"
DURATION_S = 12.0
# From the API call to the watch event reaching the bench, on a busy 2-core machine.
EVENT_LATENCY_S = 3.0


@pytest.fixture
def runtime(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = RuntimeProcess(linear_model(tmp_path / "linear.onnx"), tmp_path / "runtime.log", name="linear")
    server.start()
    yield server
    server.stop()


def _pod(
    name: str, labels: dict[str, str], finalizer: bool = False, node: str | None = None
) -> aclient.V1Pod:
    return aclient.V1Pod(
        metadata=aclient.V1ObjectMeta(
            name=name, labels=labels, finalizers=[FINALIZER] if finalizer else None
        ),
        spec=aclient.V1PodSpec(
            containers=[aclient.V1Container(name="runtime", image="kind.local/zeroserve/runtime:test")],
            automount_service_account_token=False,
            node_name=node,
        ),
    )


async def _bind(core: aclient.CoreV1Api, namespace: str, name: str, node: str) -> None:
    """What the scheduler does once a node has room: a Pending pod gets its node."""
    binding = aclient.V1Binding(
        metadata=aclient.V1ObjectMeta(name=name), target=aclient.V1ObjectReference(kind="Node", name=node)
    )
    await core.create_namespaced_pod_binding(name, namespace, binding, _preload_content=False)


async def _create(core: aclient.CoreV1Api, namespace: str, pod: aclient.V1Pod) -> None:
    async def attempt() -> bool:
        try:
            await core.create_namespaced_pod(namespace, pod)
        except ApiException as e:
            # The service-account admission plugin refuses pods until the controller has made the
            # namespace's default service account.
            if e.status == 403 and "serviceaccount" in (e.body or ""):
                return False
            raise
        return True

    await eventually(attempt, within=30, what=f"pod {pod.metadata.name} to be accepted")


async def _set_ready(core: aclient.CoreV1Api, namespace: str, name: str, ready: bool) -> None:
    status = "True" if ready else "False"
    await core.patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}},
    )


def _requests_served(runtime: RuntimeProcess) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(runtime.metrics())
        for s in family.samples
        if s.name == "zeroserve_requests_total"
    )


def _bench_file(path: Path, runtime: RuntimeProcess, replicas: dict[str, Any], duration_s: float) -> Path:
    doc = {
        "targets": [
            {"name": "rest", "kind": "oip-rest", "url": runtime.url, "model": "linear", "replicas": replicas},
            {
                "name": "grpc",
                "kind": "oip-grpc",
                "url": runtime.grpc_address,
                "model": "linear",
                "replicas": replicas,
            },
        ],
        "payload": PAYLOAD,
        "workload": {"type": "constant", "rate": 10, "duration_s": duration_s, "arrival": "uniform"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_replica_count_over_the_run_is_recorded_and_drawn(
    control_plane: ControlPlane,
    api_client: aclient.ApiClient,
    namespace: str,
    runtime: RuntimeProcess,
    tmp_path: Path,
) -> None:
    core = aclient.CoreV1Api(api_client)
    # Before the run: one ready replica, plus pods the selector or the count must leave out.
    await _create(core, namespace, _pod("a", LABELS, finalizer=True, node="node-a"))
    await _set_ready(core, namespace, "a", True)
    await _create(core, namespace, _pod("other-service", {"serving.knative.dev/service": "other"}))
    await _set_ready(core, namespace, "other-service", True)
    await _create(core, namespace, _pod("finished", LABELS))
    await core.patch_namespaced_pod_status("finished", namespace, {"status": {"phase": "Succeeded"}})

    bench = _bench_file(
        tmp_path / "bench.yaml",
        runtime,
        {"namespace": namespace, "selector": SELECTOR, "kubeconfig": str(control_plane.kubeconfig)},
        DURATION_S,
    )
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        ZEROSERVE,
        "bench",
        str(bench),
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = asyncio.ensure_future(proc.communicate())
    try:

        async def served() -> bool:
            assert not output.done(), "the bench ended before sending anything"
            return await asyncio.to_thread(_requests_served, runtime) > 0

        await eventually(served, within=60, interval=0.1, what="the bench's first request")

        # Replicas come and go during the run, as Knative's would. Each step is (what, expected count):
        # (ready, total, scheduled).
        steps: list[tuple[float, tuple[int, int, int]]] = []

        async def step(expected: tuple[int, int, int], action: Any) -> None:
            before = time.time()
            await action
            steps.append((before, expected))
            await asyncio.sleep(0.8)

        # Pending first: a replica, but on no node.
        await step((1, 2, 1), _create(core, namespace, _pod("b", LABELS)))
        await step((1, 2, 2), _bind(core, namespace, "b", "node-b"))
        await step((2, 2, 2), _set_ready(core, namespace, "b", True))
        await step((1, 2, 2), _set_ready(core, namespace, "a", False))
        # The finalizer holds the deleted pod as terminating: no longer a replica, though still listed.
        await step((1, 1, 1), core.delete_namespaced_pod("a", namespace))
        await step((0, 0, 0), core.delete_namespaced_pod("b", namespace))
        await core.patch_namespaced_pod("a", namespace, {"metadata": {"finalizers": None}})
        stdout, _ = await asyncio.wait_for(output, timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode()
    assert proc.returncode == 0, text

    report = json.loads((out / "report.json").read_text())
    t0 = report["start_epoch_s"]
    assert steps[-1][0] - t0 < DURATION_S - 1, "every change happened during the run"
    samples_csv = list(csv.DictReader((out / "samples.csv").open()))
    last_send = max(float(s["sent_s"]) for s in samples_csv)
    rows = list(csv.DictReader((out / "replicas.csv").open()))
    for target in report["targets"]:
        replicas = target["replicas"]
        # At the start, every change in order, and a fresh count at the end.
        assert replicas[0] == {"t": 0.0, "ready": 1, "total": 1, "scheduled": 1}
        changes = replicas[1:-1]
        assert [(s["ready"], s["total"], s["scheduled"]) for s in changes] == [e for _, e in steps], replicas
        for s, (before, _) in zip(changes, steps, strict=True):
            assert before - t0 <= s["t"] <= before - t0 + EVENT_LATENCY_S, (s, before - t0)
        assert [s["t"] for s in replicas] == sorted(s["t"] for s in replicas)
        assert (replicas[-1]["ready"], replicas[-1]["total"], replicas[-1]["scheduled"]) == (0, 0, 0)
        assert replicas[-1]["t"] >= last_send, "the last count is taken after the last request"
        assert target["max_replicas"] == 2
        assert target["replica_errors"] == []
        mine = [r for r in rows if r["target"] == target["name"]]
        assert [(float(r["t"]), int(r["ready"]), int(r["total"]), int(r["scheduled"])) for r in mine] == [
            (s["t"], s["ready"], s["total"], s["scheduled"]) for s in replicas
        ]
        # Replica-seconds count the scheduled ones: b's Pending time is not in them.
        held = sum(
            (after["t"] - here["t"]) * here["scheduled"] for here, after in itertools.pairwise(replicas)
        )
        assert replicas[-1]["scheduled"] == 0 and target["replica_seconds"] == pytest.approx(held, abs=0.01)
    assert report["warnings"] == []

    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["max_replicas"] for r in summary] == ["2", "2"]
    assert "max replicas" in text
    html = (out / "report.html").read_text()
    # The report's four plots (latency, offered load and success, cost, CDF) and the replicas drawn.
    assert 'alt="replicas over time" src="data:image/png;base64,' in html
    assert html.count("data:image/png;base64,") == 5


def test_an_api_server_that_cannot_be_reached_is_named_and_the_run_goes_on(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    bench = _bench_file(
        tmp_path / "bench.yaml",
        runtime,
        {"namespace": "ml", "selector": SELECTOR, "kubeconfig": "kubeconfig"},
        1,
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [ZEROSERVE, "bench", str(bench), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "target rest: replica count:" in result.stdout
    assert f"cannot reach the API server at 127.0.0.1:{port}" in result.stdout
    report = json.loads((out / "report.json").read_text())
    for t in report["targets"]:
        assert t["successes"] == t["requests"] == 10
        assert t["replicas"] == [] and t["max_replicas"] is None and t["replica_errors"]
    assert any(w.startswith("rest: replica count:") for w in report["warnings"])
    assert "replicas over time" not in (out / "report.html").read_text()


BAD_REPLICAS = [
    ({"namespace": "ml"}, "targets[0] (a).replicas.selector: Field required"),
    ({"selector": "app=x"}, "targets[0] (a).replicas.namespace: Field required"),
    (
        {"namespace": "ML_models", "selector": "app=x"},
        "targets[0] (a).replicas.namespace: String should match",
    ),
    (
        {"namespace": "ml", "selector": "app=x y"},
        "replicas.selector: Value error, not a Kubernetes label selector",
    ),
    (
        {"namespace": "ml", "selector": " "},
        "replicas.selector: Value error, an empty selector would match every",
    ),
    ({"namespace": "ml", "selector": "app in (a"}, "not a Kubernetes label selector: 'app in (a'"),
    (
        {"namespace": "ml", "selector": "app=x", "labels": "y"},
        "replicas.labels: Extra inputs are not permitted",
    ),
    ({"namespace": "ml", "selector": "app=x", "kubeconfig": "nope.yaml"}, "replicas.kubeconfig: "),
    ("ml/app=x", "targets[0] (a).replicas: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("block", "message"), BAD_REPLICAS, ids=[m for _, m in BAD_REPLICAS])
def test_bad_replicas_block_names_the_field(tmp_path: Path, block: object, message: str) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {"name": "a", "kind": "oip-grpc", "url": "127.0.0.1:1", "model": "m", "replicas": block}
                ],
                "payload": PAYLOAD,
                "workload": {"type": "constant", "rate": 1, "duration_s": 1},
            }
        )
    )
    with pytest.raises(BenchFileError) as e:
        load_bench_file(path)
    assert message in str(e.value) and str(path) in str(e.value)
    if "kubeconfig" in message:
        assert f"{tmp_path / 'nope.yaml'} does not exist" in str(e.value)


def test_replicas_block_accepts_selectors_and_resolves_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    path = tmp_path / "bench.yaml"
    selectors = ["serving.knative.dev/service=effnet", "app in (a, b),!canary, tier!=db", "app"]
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {
                        "name": f"t{i}",
                        "kind": "oip-rest",
                        "url": "http://127.0.0.1:1",
                        "model": "m",
                        "replicas": {"namespace": "ml", "selector": s, "kubeconfig": "kube/config"},
                    }
                    for i, s in enumerate(selectors)
                ]
                + [{"name": "plain", "kind": "oip-rest", "url": "http://127.0.0.1:1", "model": "m"}],
                "payload": PAYLOAD,
                "workload": {"type": "constant", "rate": 1, "duration_s": 1},
            }
        )
    )
    bench, _ = load_bench_file(path)
    assert [t.replicas.selector for t in bench.targets[:3]] == selectors  # type: ignore[union-attr]
    assert bench.targets[0].replicas.kubeconfig == tmp_path / "kube" / "config"  # type: ignore[union-attr]
    assert bench.targets[3].replicas is None
