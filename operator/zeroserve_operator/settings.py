"""Operator configuration: environment variables with the ZEROSERVE_OPERATOR_ prefix (the Helm chart sets
them), or the matching `zeroserve operator` flags."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The installed distribution's version (pyproject takes it from zeroserve/__init__.py): the operator
# image has no business importing the CLI package for it.
__version__ = version("zeroserve")


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_OPERATOR_", extra="ignore")

    onnx_image: str = Field(
        default=f"ghcr.io/zeroserve/runtime-onnx:{__version__}",
        description="Image for runtime.name=onnx when the ModelService names none.",
    )
    onnx_gpu_image: str = Field(
        default=f"ghcr.io/zeroserve/runtime-onnx:{__version__}-gpu",
        description="Image for runtime.name=onnx with resources.gpu when the ModelService names none: the "
        "same runtime with onnxruntime-gpu and its CUDA and cuDNN libraries (runtimes/onnx/Dockerfile, "
        "--build-arg DEVICE=gpu). The CPU image refuses to serve a GPU spec.",
    )
    triton_image: str = Field(
        default="nvcr.io/nvidia/tritonserver:24.10-py3",
        description="Image for runtime.name=triton: NVIDIA's Triton, unmodified (24.10 is Triton 2.51, the "
        "release the tests run). The model is fetched by an init container from onnx_image.",
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="nodeSelector added to GPU ModelServices that set none, "
        "e.g. {'nvidia.com/gpu.present': 'true'}.",
    )
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations added to GPU ModelServices that set none.",
    )
    gpu_progress_deadline: str = Field(
        default="1800s",
        description="serving.knative.dev/progress-deadline for GPU replicas, which may wait for a node "
        "to scale up and a large image to pull.",
    )
    progress_deadline: str = Field(
        default="900s",
        description="serving.knative.dev/progress-deadline for CPU replicas (Knative's default is 600s).",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")
    metrics_addr: str = Field(default="0.0.0.0", description="Address /metrics listens on.")
    retry_delay: float = Field(
        default=30,
        gt=0,
        description="Seconds between retries while blocked by the cluster (Knative missing, a feature off).",
    )
    health_interval: float = Field(
        default=10,
        gt=0,
        description="Seconds between looks at a not-ready ModelService's pods, for a runtime that fails.",
    )
    worker_limit: int = Field(
        default=32, ge=1, description="ModelServices reconciled at once; the rest wait their turn."
    )
    knative_namespace: str = Field(
        default="knative-serving", description="Namespace of Knative Serving's config-features."
    )
