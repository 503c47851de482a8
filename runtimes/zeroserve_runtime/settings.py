"""Runtime configuration: ZEROSERVE_* environment variables (what the operator sets) or the matching
`zeroserve serve --kebab-case` flags, both read by pydantic-settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU limit)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return cpus


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ZEROSERVE_",
        extra="ignore",
        protected_namespaces=(),
        cli_kebab_case=True,
        cli_prog_name="zeroserve serve",
        cli_implicit_flags=True,
    )

    model_uri: str = Field(description="Model file: a path, file://, http(s)://, s3:// or gs:// URI.")
    model_name: str = Field(default="model", description="Name the model is served under.")
    model_format: Literal["onnx"] = Field(default="onnx", description="Model format.")
    model_sha256: str | None = Field(
        default=None, description="Refuse to start unless the file has this SHA-256."
    )
    cache_dir: Path = Field(
        default=Path("/tmp/zeroserve-models"), description="Where fetched models are kept."
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="REST (OIP v2) port.")
    grpc_port: int = Field(default=9000, ge=0, le=65535, description="gRPC (OIP v2) port; 0 turns gRPC off.")
    device: Literal["cpu", "gpu"] = Field(default="cpu", description="gpu uses CUDA when onnxruntime has it.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Intra-op threads per inference; default: the CPUs this container may use, shared "
        "among the parallel inferences.",
    )
    parallel_inferences: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Inferences run at once on the one session. 1 gives each request every core (lowest "
        "latency); one per CPU with 1 thread each gives the most throughput under concurrent load.",
    )
    max_batch_size: int = Field(default=1, ge=1, le=1024, description="Adaptive batching; 1 turns it off.")
    max_queue_delay_ms: float = Field(
        default=0, ge=0, le=10_000, description="Longest wait for a batch to fill."
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        description="Requests admitted at once (running and queued); more get 503 with Retry-After.",
    )
    max_request_bytes: int = Field(default=64 * 2**20, ge=1024, description="Larger request bodies get 413.")
    shutdown_grace_seconds: float = Field(
        default=30, ge=0, description="How long SIGTERM waits for in-flight work."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    def intra_op_threads(self) -> int:
        return self.threads or max(1, available_cpus() // self.parallel_inferences)
