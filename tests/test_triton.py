"""runtime.name: triton, against a real tritonserver. The operator's pure builders give the config.pbtxt,
the init container and the server's command line; the real `zeroserve fetch` fills the repository with
the init container's environment; the real tritonserver (2.51, the nvidia-pytriton wheel's) runs that
exact command line, and the unmodified tritonclient talks to it.

The wheel's server has only the Python backend, so the fetched model.onnx is served through a Python
model that runs it with onnxruntime (tests/triton/model.py), the config's platform line being the one
change. Triton's own onnxruntime backend, and so the generated platform line itself, is checked only by
parsing the config into Triton's ModelConfig message: the README says so.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException
from tritonproc import Triton, TritonError, require_tritonserver, run_fetch, to_python_backend
from zeroserve_operator.api import ModelServiceSpec
from zeroserve_operator.resources import status, triton
from zeroserve_operator.resources.knative import build_knative_service
from zeroserve_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(onnx_image="registry.example/runtime-onnx:1")
PORTS = [triton.TRITON_HTTP_PORT, triton.TRITON_GRPC_PORT, triton.TRITON_METRICS_PORT]


@pytest.fixture(scope="module", autouse=True)
def tritonserver() -> None:
    try:
        require_tritonserver()
    except TritonError as e:
        pytest.fail(str(e), pytrace=False)


def modelservice(uri: str, sha256: str | None = None, **runtime: Any) -> dict[str, Any]:
    model = {"uri": uri, **({"sha256": sha256} if sha256 else {})}
    return {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "linear", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"model": model, "runtime": {"name": "triton", **runtime}},
    }


def parsed(config: str) -> model_config_pb2.ModelConfig:
    """The config as Triton reads it: a misspelt or misplaced field raises here."""
    return text_format.Parse(config, model_config_pb2.ModelConfig())


def test_the_config_is_a_valid_triton_model_config_carrying_the_spec() -> None:
    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": "s3://b/m.onnx"},
            "runtime": {
                "name": "triton",
                "batching": {"maxBatchSize": 8, "maxQueueDelayMs": 5},
                "parallelInferences": 3,
            },
        }
    )
    config = parsed(triton.model_config("effnet", spec))
    assert (config.name, config.platform, config.max_batch_size) == ("effnet", "onnxruntime_onnx", 8)
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    (group,) = config.instance_group
    assert (group.count, group.kind) == (3, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert not config.HasField("optimization")

    plain = parsed(
        triton.model_config(
            "m",
            ModelServiceSpec.model_validate(
                {"model": {"uri": "s3://b/m.onnx"}, "runtime": {"name": "triton"}}
            ),
        )
    )
    # No batching asked for: Triton's batcher stays out and requests keep their own shapes.
    assert plain.max_batch_size == 0 and not plain.HasField("dynamic_batching")
    assert plain.instance_group[0].count == 1

    gpu = ModelServiceSpec.model_validate(
        {
            "model": {"uri": "s3://b/m.onnx"},
            "runtime": {"name": "triton", "tensorrt": {"precision": "FP16"}},
            "resources": {"gpu": {"count": 1}},
        }
    )
    config = parsed(triton.model_config("m", gpu))
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}


def test_the_pod_is_nvidias_image_fed_by_zeroserve_fetch_in_an_init_container() -> None:
    ksvc = build_knative_service(modelservice("s3://b/linear.onnx", "a" * 64), SETTINGS)
    pod = ksvc["spec"]["template"]["spec"]
    (init,), (server,) = pod["initContainers"], pod["containers"]
    assert init["image"] == SETTINGS.onnx_image and init["args"] == ["fetch"]
    assert server["image"] == SETTINGS.triton_image and server["image"].startswith(
        "nvcr.io/nvidia/tritonserver:"
    )
    assert server["ports"] == [{"name": "http1", "containerPort": 8000}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    # Both run as the restricted runtime user; the server only reads the repository.
    for c in (init, server):
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {
            "drop": ["ALL"]
        }
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    assert "kubernetes.podspec-init-containers" in status.required_features(ksvc)
    # Triton's metrics port, not the HTTP one, is what Prometheus is told to scrape.
    assert ksvc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    grpc = build_knative_service(modelservice("s3://b/linear.onnx", protocol="grpc"), SETTINGS)
    assert grpc["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"name": "h2c", "containerPort": 8001}
    ]


def fetched_repository(
    tmp_path: Path, models: dict[str, Path], **runtime: Any
) -> tuple[dict[str, Any], Path, str]:
    """The operator's Knative Service for the linear model, and the repository its real init container
    wrote; returns (server container, repository, the generated config.pbtxt)."""
    data = models["linear"].read_bytes()
    ksvc = build_knative_service(
        modelservice(f"file://{models['linear']}", hashlib.sha256(data).hexdigest(), **runtime), SETTINGS
    )
    pod = ksvc["spec"]["template"]["spec"]
    repository = tmp_path / "models"
    done = run_fetch(pod["initContainers"][0], repository, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert (repository / "linear" / "1" / "model.onnx").read_bytes() == data
    generated, _ = to_python_backend(repository / "linear")
    return pod["containers"][0], repository, generated


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_the_operators_command_line_serves_tritonclient_with_the_specs_batching(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    server, repository, generated = fetched_repository(
        tmp_path, models, batching={"maxBatchSize": 4, "maxQueueDelayMs": 50}, parallelInferences=2
    )
    session = ort.InferenceSession(str(models["linear"]), providers=["CPUExecutionProvider"])
    with Triton(server["args"], repository, tmp_path / "triton.log", PORTS) as t:
        t.ready(triton.TRITON_HTTP_PORT)
        # What Triton loaded is the generated config, completed from the model.
        loaded = get_json(f"http://127.0.0.1:{triton.TRITON_HTTP_PORT}/v2/models/linear/config")
        want = parsed(generated)
        assert loaded["max_batch_size"] == want.max_batch_size == 4
        assert loaded["dynamic_batching"]["max_queue_delay_microseconds"] == 50_000
        assert [(g["count"], g["kind"]) for g in loaded["instance_group"]] == [(2, "KIND_CPU")]
        assert {i["name"] for i in loaded["input"]} == {"x"} and {o["name"] for o in loaded["output"]} == {
            "y",
            "z",
        }

        client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.TRITON_HTTP_PORT}", concurrency=8)
        xs = [np.random.default_rng(i).standard_normal((1, 4), dtype=np.float32) for i in range(8)]

        def infer(x: np.ndarray) -> np.ndarray:
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = httpclient.InferRequestedOutput("y", binary_data=True)
            return client.infer("linear", [inp], outputs=[out]).as_numpy("y")

        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(infer, xs))
        finally:
            client.close()
        for x, y in zip(xs, answers, strict=True):
            np.testing.assert_allclose(y, session.run(["y"], {"x": x})[0], rtol=1e-6)
        # Eight concurrent requests in fewer executions: the spec's dynamic batching reached Triton.
        (stats,) = get_json(f"http://127.0.0.1:{triton.TRITON_HTTP_PORT}/v2/models/linear/stats")[
            "model_stats"
        ]
        assert stats["inference_count"] == 8 and stats["execution_count"] < 8, stats

        # Metrics on their own port, counting what was served.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{triton.TRITON_METRICS_PORT}/metrics", timeout=10
        ) as r:
            metrics = r.read().decode()
        assert 'nv_inference_request_success{model="linear",version="1"} 8' in metrics, metrics[:2000]
        # A REST ModelService routes HTTP only: Triton's gRPC server is off, as Knative could not reach it.
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.TRITON_GRPC_PORT}")
        with pytest.raises(InferenceServerException):
            grpc.is_server_live(client_timeout=2)
        grpc.close()


def test_a_grpc_modelservice_is_served_over_grpc(tmp_path: Path, models: dict[str, Path]) -> None:
    server, repository, _ = fetched_repository(tmp_path, models, protocol="grpc")
    assert server["ports"][0]["containerPort"] == triton.TRITON_GRPC_PORT
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with Triton(server["args"], repository, tmp_path / "triton.log", PORTS) as t:
        t.ready(triton.TRITON_HTTP_PORT)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.TRITON_GRPC_PORT}")
        try:
            assert client.is_model_ready("linear")
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            z = client.infer("linear", [inp]).as_numpy("z")
        finally:
            client.close()
    expected = ort.InferenceSession(str(repository / "linear" / "1" / "model.onnx")).run(["z"], {"x": x})[0]
    # No batching in the spec: a two-row request passes whole, as the onnx runtime would take it.
    np.testing.assert_allclose(z, expected, rtol=1e-6)


def termination_message(log: str) -> str:
    """What the kubelet keeps of a failed container's log with FallbackToLogsOnError: the last 80 lines,
    at most 2048 bytes."""
    return "\n".join(log.splitlines()[-80:])[-2048:]


def test_a_model_triton_cannot_load_stops_the_server_and_its_reason_reaches_the_condition(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """--exit-on-error with every model loaded at start: the container exits, and the operator turns its
    last log lines (the pod's termination message, FallbackToLogsOnError) into the ModelService's reason."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    server, repository, _ = fetched_repository(tmp_path, {"linear": broken})
    with Triton(server["args"], repository, tmp_path / "triton.log", PORTS) as t:
        code = t.wait(60)
        log = t.log()
    assert code != 0, log
    pod = {
        "metadata": {"name": "linear-00001-deployment-x"},
        "status": {
            "containerStatuses": [
                {
                    "name": server["name"],
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": code, "message": termination_message(log)}},
                }
            ]
        },
    }
    reason, message = status.runtime_failure([pod], server["name"], triton.FETCH_CONTAINER)  # type: ignore[misc]
    assert reason == "RuntimeFailed"
    assert "failed to load 'linear' version 1" in message and "Protobuf parsing failed" in message, message


def test_a_model_that_fails_its_sha256_stops_in_the_init_container(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    ksvc = build_knative_service(modelservice(f"file://{models['linear']}", "0" * 64), SETTINGS)
    init = ksvc["spec"]["template"]["spec"]["initContainers"][0]
    done = run_fetch(init, tmp_path / "models", tmp_path / "cache")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "refusing to serve it" in last, done.stderr
    assert not (tmp_path / "models" / "linear" / "1" / "model.onnx").exists()
    pod = {
        "metadata": {"name": "linear-00001-deployment-x"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": init["name"],
                    "restartCount": 2,
                    "lastState": {"terminated": {"exitCode": 1, "message": done.stderr}},
                }
            ]
        },
    }
    reason, message = status.runtime_failure([pod], "runtime", triton.FETCH_CONTAINER)  # type: ignore[misc]
    assert reason == "RuntimeFailed" and message.startswith(
        "The model fetch (init container) exited with code 1"
    )
    assert last in message
