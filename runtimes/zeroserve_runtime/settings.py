"""Runtime configuration: ZEROSERVE_* environment variables (what the operator sets) or the matching
`zeroserve serve --kebab-case` flags, both read by pydantic-settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the tightest CPU quota of its cgroup and its
    ancestors (a pod's CPU limit), cgroup v2 or v1. On a v1 node a pod with a 1-CPU limit would otherwise
    run one inference thread per core and spend the quota's tail throttled."""
    cpus = len(os.sched_getaffinity(0))
    for quota in _cpu_quotas():
        cpus = min(cpus, max(1, int(quota + 0.5)))
    return cpus


# cgroup v1 reports "no limit" as a huge page-rounded number rather than a word.
_UNLIMITED = 1 << 62


def _cgroup_files(v2_name: str, v1_controller: str, v1_name: str) -> list[Path]:
    """A cgroup file of this process's cgroup and its ancestors, v2 and v1. Inside a container the cgroup
    is mounted at the root; outside (or in tests) it is the path /proc/self/cgroup names."""
    candidates = [Path("/sys/fs/cgroup") / v2_name, Path("/sys/fs/cgroup") / v1_controller / v1_name]
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            root, name = Path("/sys/fs/cgroup"), v2_name
        elif v1_controller in controllers.split(","):
            # Mounted under the controller's name or the joined one ("cpu,cpuacct"); "cpu" is usually a
            # link to the latter.
            root, name = Path("/sys/fs/cgroup") / controllers, v1_name
        else:
            continue
        # A parent's limit binds its children too.
        here = Path(path)
        for folder in (here, *here.parents):
            candidates.append(root / str(folder).lstrip("/") / name)
    return candidates


def _read(file: Path) -> str | None:
    try:
        return file.read_text().strip()
    except OSError:
        return None


def _cpu_quotas() -> list[float]:
    """CPU quotas (in CPUs) that bind this process."""
    quotas = []
    for file in _cgroup_files("cpu.max", "cpu", "cpu.cfs_quota_us"):
        text = _read(file)
        if not text:
            continue
        try:
            if file.name == "cpu.max":
                quota, period = text.split()
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            elif int(text) > 0:  # v1: -1 is no limit
                period = _read(file.with_name("cpu.cfs_period_us"))
                quotas.append(int(text) / int(period or 100_000))
        except ValueError:
            continue
    return quotas


def _cgroup_limits() -> list[int]:
    """Memory limits of this process's cgroup and its ancestors, v1 and v2."""
    limits = []
    for file in _cgroup_files("memory.max", "memory", "memory.limit_in_bytes"):
        value = _read(file)
        if value and value.isdigit() and int(value) < _UNLIMITED:
            limits.append(int(value))
    return limits


def memory_limit() -> int:
    """Bytes this process may use: its container's memory limit, else the machine's memory."""
    limits = _cgroup_limits()
    if limits:
        return min(limits)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# The share of the memory limit that request bodies and decoded tensors may hold; the rest is the
# interpreter, the model and its activations (for a batch of 100 images, EfficientNet-Lite0's are 0.9 GB).
INFLIGHT_SHARE = 0.25


class ModelSourceSettings(BaseSettings):
    """Where the model is and how it is checked: shared by `zeroserve serve` and `zeroserve fetch`."""

    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_", extra="ignore", protected_namespaces=())

    model_uri: str = Field(description="Model file: a path, file://, http(s)://, s3:// or gs:// URI.")
    model_name: str = Field(default="model", description="Name the model is served under.")
    model_format: Literal["onnx"] = Field(default="onnx", description="Model format.")
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Refuse to start unless the file has this SHA-256; it also keys the model cache, so "
        "the same bytes are found from any URI.",
    )
    cache_dir: Path = Field(
        default=Path("/tmp/zeroserve-models"),
        description="Where fetched models are kept. May be shared by every pod of a node: with a SHA-256 "
        "a cached file is re-hashed on each use.",
    )


def cli_settings(prog: str) -> SettingsConfigDict:
    """ZEROSERVE_* variables, or the matching kebab-case flags of the subcommand `prog`."""
    return SettingsConfigDict(
        env_prefix="ZEROSERVE_",
        extra="ignore",
        protected_namespaces=(),
        cli_kebab_case=True,
        cli_prog_name=prog,
        cli_implicit_flags=True,
    )


class RuntimeSettings(ModelSourceSettings):
    model_config = cli_settings("zeroserve serve")

    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    http_port: int = Field(default=8080, ge=0, le=65535, description="REST (OIP v2) port.")
    grpc_port: int = Field(default=9000, ge=0, le=65535, description="gRPC (OIP v2) port; 0 turns gRPC off.")
    device: Literal["cpu", "gpu"] = Field(
        default="cpu",
        description="gpu runs on onnxruntime's CUDA execution provider, and refuses to start without it "
        "unless --allow-cpu-fallback.",
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="With --device gpu, serve on CPU when CUDA is not available instead of exiting 1. The "
        "provider in use is in the model metadata and the zeroserve_execution_provider metric.",
    )
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE",
        description="With --device gpu, how cuDNN picks each convolution's algorithm: EXHAUSTIVE times "
        "every candidate when the input's shape changes (onnxruntime's default), HEURISTIC asks cuDNN's "
        "heuristics. On EfficientNet-Lite0 (an H200) a run after a shape change took 0.9-1.5 s under "
        "EXHAUSTIVE and 0.1-0.4 s under HEURISTIC, against 2-3 ms at an unchanged shape.",
    )
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
    batch_padding: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="With adaptive batching, pad every run with zero rows to --max-batch-size, so the "
        "session always sees one shape (and warms up at it). auto: on the CUDA execution provider, where "
        "a run whose batch size differs from the last one re-plans every convolution (EfficientNet-Lite0 "
        "on an H200: 0.1-1.5 s, which took batching from 593 to 20-68 requests/s).",
    )
    max_queue_delay_ms: float = Field(
        default=0, ge=0, le=10_000, description="Longest wait for a batch to fill."
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        description="Requests admitted at once (running and queued); more get 503 with Retry-After.",
    )
    max_request_bytes: int = Field(default=64 * 2**20, ge=1024, description="Larger request bodies get 413.")
    max_inflight_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Bytes of request bodies and decoded tensors held at once; a request that would go "
        "over gets 503 with Retry-After before its body is read. Default: a quarter of the container's "
        "memory limit (cgroup), or of the machine's memory.",
    )
    shutdown_grace_seconds: float = Field(
        default=30, ge=0, description="How long SIGTERM waits for in-flight work."
    )
    drain_delay_seconds: float = Field(
        default=1,
        ge=0,
        le=60,
        description="After SIGTERM, the server reports not ready but keeps accepting until no request has "
        "come for this long (at most half --shutdown-grace-seconds), before it stops listening: the time "
        "Services and proxies take to stop sending it new connections.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")

    def intra_op_threads(self) -> int:
        return self.threads or max(1, available_cpus() // self.parallel_inferences)

    def inflight_bytes(self) -> int:
        return self.max_inflight_bytes or int(memory_limit() * INFLIGHT_SHARE)
