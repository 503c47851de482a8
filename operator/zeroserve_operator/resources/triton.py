"""NVIDIA Triton for a ModelService, built by pure functions: the model configuration (config.pbtxt), the
init container that fetches the model into Triton's model repository, and the unmodified tritonserver's
command line. Zeroserve's own code runs only in the init container (`zeroserve fetch`, from the runtime
image); the server is NVIDIA's image as published."""

from __future__ import annotations

from typing import Any

from zeroserve_operator.api import ModelServiceSpec

TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
MODEL_REPOSITORY = "/models"
FETCH_CONTAINER = "fetch"
# The runtime's settings that `zeroserve fetch` shares: where the model is and how it is checked.
FETCH_ENV = (
    "ZEROSERVE_MODEL_NAME",
    "ZEROSERVE_MODEL_URI",
    "ZEROSERVE_MODEL_FORMAT",
    "ZEROSERVE_MODEL_SHA256",
    "ZEROSERVE_CACHE_DIR",
)


def model_config(name: str, spec: ModelServiceSpec) -> str:
    """config.pbtxt (protobuf text of Triton's ModelConfig) for the model. Inputs and outputs are left to
    Triton's auto-complete, which reads them from the ONNX file."""
    runtime = spec.runtime
    gpu = spec.resources.gpu is not None
    # 0 keeps Triton's batcher out unless the spec asks for it: requests pass with their own shapes, as
    # the onnx runtime takes them (the server's --backend-config stops auto-complete from choosing 4).
    max_batch = runtime.batching.max_batch_size if runtime.batching else 0
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
    ]
    if runtime.batching is not None and max_batch > 1:
        delay_us = runtime.batching.max_queue_delay_ms * 1000
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}")
    count = runtime.parallel_inferences or 1
    lines.append(f"instance_group [ {{ count: {count} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]")
    if runtime.tensorrt is not None:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator [ {",
            '  name: "tensorrt"',
            f'  parameters {{ key: "precision_mode" value: "{runtime.tensorrt.precision}" }}',
            "} ] } }",
        ]
    return "\n".join(lines) + "\n"


def server_args(spec: ModelServiceSpec) -> list[str]:
    """tritonserver's command line: the repository as the init container left it, loaded once at start
    (no polling, no API to load others), ready only when every model is, and exiting when one cannot
    load, so a broken model fails the revision instead of serving nothing."""
    grpc = spec.runtime.protocol == "grpc"
    return [
        "tritonserver",
        f"--model-repository={MODEL_REPOSITORY}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--backend-config=default-max-batch-size=0",
        f"--http-port={TRITON_HTTP_PORT}",
        # Knative routes one port; a gRPC server nobody can reach is left off, as in the onnx runtime.
        f"--allow-grpc={'true' if grpc else 'false'}",
        f"--grpc-port={TRITON_GRPC_PORT}",
        "--allow-metrics=true",
        f"--metrics-port={TRITON_METRICS_PORT}",
        # Its info lines end with tables several KB long, even when it exits; the kubelet keeps only the
        # last 2 KB of the log as the termination message, which would then hold no reason at all.
        "--log-info=false",
    ]


def port(spec: ModelServiceSpec) -> dict[str, Any]:
    if spec.runtime.protocol == "grpc":
        return {"name": "h2c", "containerPort": TRITON_GRPC_PORT}
    return {"name": "http1", "containerPort": TRITON_HTTP_PORT}
