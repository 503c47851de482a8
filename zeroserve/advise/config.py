"""The advise file: the model, one OIP v2 payload, the workload (the bench's, or a recorded trace), the
objectives, and the platforms to consider with their knobs.

    model: {path: digits.onnx, name: digits}
    payload: auto                       # or a request.json, or an inline OIP v2 request
    workload: {type: mmpp, rates: [2, 20], mean_sojourn_s: [60, 20], duration_s: 3600, seed: 1}
    objectives: {p99_ms: 200, min_success_ratio: 0.999, max_cold_start_share: 0.01}
    platforms:
      knative: {vcpu: [1, 2], min_scale: [0, 1], target: [1, 4], scale_to_zero_retention_s: [0, 300]}
      lambda: {memory_mb: [1024, 1769, 3008], provisioned_concurrency: [0, 2]}
      cloud_run: {vcpu: [1, 2], concurrency: [1, 8, 80], min_instances: [0, 1]}
      always_on: {presets: [aws-c7i.xlarge, sagemaker-ml.c5.xlarge], replicas: [1, 2]}

Every knob is a list: the configurations are their product. Every assumption the simulation makes that
the profile does not measure is a named field of a platform's `assumptions`, with its source in its
description; override any of them in the file.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from zeroserve_loadgen.workloads import MMPP, Constant, Sporadic, Steps


class AdviseFileError(ValueError):
    """An advise file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- the workload: the bench's, or a trace --------------------------------------------------------------


class Trace(_Strict):
    """The send times of a recorded run: `samples.csv` from `zeroserve bench` (its scheduled_s column),
    one target's rows. The same arrivals, replayed through every platform."""

    type: Literal["trace"] = "trace"
    samples_csv: Path = Field(description="A samples.csv written by zeroserve bench; relative to this file.")
    target: str | None = Field(None, description="Whose rows to replay; unset: the first target in the file.")
    seed: int = 0
    _times: np.ndarray | None = None

    def load(self, base_dir: Path) -> Trace:
        path = self.samples_csv if self.samples_csv.is_absolute() else base_dir / self.samples_csv
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise AdviseFileError(f"workload.samples_csv: {path} does not exist") from None
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise AdviseFileError(f"workload.samples_csv: {path} cannot be read: {e}") from None
        if not rows:
            raise AdviseFileError(f"workload.samples_csv: {path} has no requests in it (an empty trace)")
        if "scheduled_s" not in rows[0] or "target" not in rows[0]:
            raise AdviseFileError(
                f"workload.samples_csv: {path} is not a zeroserve bench samples.csv "
                f"(no scheduled_s and target columns; it has {', '.join(rows[0])})"
            )
        target = self.target or rows[0]["target"]
        try:
            times = np.array(sorted(float(r["scheduled_s"]) for r in rows if r["target"] == target))
        except ValueError as e:
            raise AdviseFileError(
                f"workload.samples_csv: {path}: a scheduled_s is not a number: {e}"
            ) from None
        if times.size == 0:
            names = sorted({r["target"] for r in rows})
            raise AdviseFileError(
                f"workload.target: {target!r} has no rows in {path}; it has {', '.join(names)}"
            )
        if not np.isfinite(times).all() or times[0] < 0:
            raise AdviseFileError(f"workload.samples_csv: {path}: scheduled_s must be finite and >= 0")
        times = times - times[0]
        trace = self.model_copy()
        trace._times = times
        return trace

    def arrivals(self) -> np.ndarray:
        if self._times is None:
            raise RuntimeError("Trace.load() first")
        return self._times

    @property
    def duration(self) -> float:
        times = self.arrivals()
        return float(times[-1]) + 1.0

    def mean_rate(self) -> float:
        return len(self.arrivals()) / self.duration


AdviseWorkload = Annotated[Constant | Steps | MMPP | Sporadic | Trace, Field(discriminator="type")]


# -- the model and the objectives --------------------------------------------------------------------------


class ModelFile(_Strict):
    path: Path = Field(description="The ONNX file to profile; relative to this file.")
    name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="Checked when given.")


class Objectives(_Strict):
    p99_ms: float = Field(gt=0, description="99th percentile latency of successful requests, client side.")
    min_success_ratio: float = Field(0.999, ge=0, le=1)
    max_cold_start_share: float | None = Field(
        None, ge=0, le=1, description="Most requests that may wait for a cold start, as a share of all."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="A request slower than this failed (zeroserve bench's default timeout)."
    )


# -- platforms -------------------------------------------------------------------------------------------

KNATIVE_CONFIG = "knative.dev/serving config/core/configmaps/autoscaler.yaml (v0.50), the defaults"
ENGINEERING_4C = "measured on this project's test node, /work/shared/ENGINEERING.md §4c"
LAMBDA_MEMORY_DOC = "https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html"
LAMBDA_QUOTAS_DOC = "https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html"
CLOUD_RUN_SCALING_DOC = "https://cloud.google.com/run/docs/about-instance-autoscaling"
CLOUD_RUN_LIMITS_DOC = "https://cloud.google.com/run/docs/configuring/services/cpu"
ESTIMATE = "not published; an estimate, measure yours and override"


def _grid(values: list[Any], low: float | None, high: float | None, what: str, unit: str = "") -> list[Any]:
    if not values:
        raise ValueError("give at least one value")
    for v in values:
        if (low is not None and v < low) or (high is not None and v > high):
            span = f"{low:g}-{high:,g}{unit}" if high is not None else f"at least {low:g}{unit}"
            raise ValueError(f"{v:g}{unit} is outside {what}'s limits ({span})")
    return sorted(dict.fromkeys(values))


class KnativeAssumptions(_Strict):
    stable_window_s: float = Field(60, ge=6, le=3600, description=f"stable-window: {KNATIVE_CONFIG}.")
    panic_window_percentage: float = Field(10, ge=1, le=100, description=f"{KNATIVE_CONFIG}.")
    panic_threshold_percentage: float = Field(200, ge=110, description=f"{KNATIVE_CONFIG}.")
    target_utilization: float = Field(
        0.7, gt=0, le=1, description=f"container-concurrency-target-percentage 70: {KNATIVE_CONFIG}."
    )
    tick_s: float = Field(2, gt=0, description=f"The autoscaler's tick-interval: {KNATIVE_CONFIG}.")
    tick_phases: int = Field(
        4,
        ge=1,
        le=16,
        description="Where in its tick the autoscaler is when the load starts is unknown, and near the "
        "scale-to-zero edge one tick decides whether a request waits for a start (on this project's test "
        "node one phase against another moved cold starts from 13 to 19 in 600 s): each configuration is "
        "simulated at this many evenly spaced phases and the results averaged. More is smoother and slower.",
    )
    scale_to_zero_grace_s: float = Field(
        30, ge=0, description=f"scale-to-zero-grace-period: {KNATIVE_CONFIG}."
    )
    max_scale_down_rate: float = Field(
        2.0, gt=1, description=f"{KNATIVE_CONFIG} (Knative refuses 1 or less: config.go validate)."
    )
    target_burst_capacity: float = Field(
        200,
        ge=-1,
        description=f"target-burst-capacity: {KNATIVE_CONFIG}. While the replicas' spare room is below it "
        "the activator stays in the path, and then scale to zero does not wait the grace period again "
        "(pkg/reconciler/autoscaling/kpa/scaler.go handleScaleToZero). -1: always in the path.",
    )
    pod_start_s: float = Field(
        1.0,
        ge=0,
        description="Scheduling, sandbox and container start before the runtime's own process starts: a "
        f"busybox Knative Service answered through the activator from zero in 1.0-1.65 s, {ENGINEERING_4C}.",
    )
    proxy_overhead_ms: float = Field(
        3.0, ge=0, description=f"Ingress and queue-proxy per request: warm answers 3-25 ms, {ENGINEERING_4C}."
    )
    termination_drain_s: float = Field(
        32,
        ge=0,
        description="How long a replica told to go keeps its CPU request on the node: the queue-proxy "
        "sleeps drainSleepDuration (30 s) before it exits, knative.dev/serving pkg/queue/sharedmain/main.go "
        "(v0.50), then the runtime exits and the kubelet confirms; deletion to gone took 31.7-32.3 s on "
        "this project's test node (bench/advise_knative.py). It only matters when max_nodes bounds the "
        "room: a start soon after scale to zero on a full node waits for it.",
    )
    queue_proxy_vcpu: float = Field(
        0.025,
        ge=0,
        description="The queue-proxy's CPU request beside each replica: queue-sidecar-cpu-request 25m, "
        "knative.dev/serving config/core/configmaps/deployment.yaml (v0.50).",
    )


class Knative(_Strict):
    """A ModelService: Knative's KPA over the Zeroserve runtime, one inference at a time per replica."""

    enabled: bool = True
    vcpu: list[float] = Field([1.0], description="resources.cpu per replica (its cgroup CPU quota).")
    memory_gib: float = Field(1.0, gt=0)
    min_scale: list[int] = Field([0, 1], description="scaling.minReplicas.")
    max_scale: int = Field(100, ge=1, le=1000)
    target: list[float] = Field([1.0, 4.0], description="scaling.target: in-flight requests per replica.")
    container_concurrency: list[int] = Field([0], description="scaling.containerConcurrency, 0: no limit.")
    max_batch_size: list[int] = Field([1], description="runtime.batching.maxBatchSize.")
    parallel_inferences: list[int] = Field(
        [1],
        description="runtime.parallelInferences: requests one replica runs at once, sharing its CPUs (the "
        "profile times them run together). Not combined with batching.",
    )
    scale_to_zero_retention_s: list[float] = Field([0.0], description="scaling.scaleToZeroRetention.")
    node: str = Field("aws-c7i.xlarge", description="The node type replicas run on, from the node presets.")
    fixed_nodes: int = Field(0, ge=0, description="Nodes paid for whatever the load (the cluster's floor).")
    max_nodes: int | None = Field(
        None,
        ge=1,
        description="Nodes the replicas can be scheduled on. Unset: as many as the replicas need (a cluster "
        "autoscaler; the time it takes to add a node is not modelled). Set: replicas beyond the room wait "
        "Pending, still counted as replicas.",
    )
    node_free_vcpu: float | None = Field(
        None,
        gt=0,
        description="CPU per node left for replicas once the system pods' requests are taken (kubectl "
        "describe node: Allocatable less Allocated). Unset: the node preset's vCPU.",
    )
    assumptions: KnativeAssumptions = KnativeAssumptions()

    def free_vcpu(self) -> float:
        from zeroserve.advise.pricing import NODES

        return self.node_free_vcpu if self.node_free_vcpu is not None else NODES[self.node].vcpu

    def per_node(self, vcpu: float) -> int:
        """Replicas of `vcpu` (and their queue-proxies) one node fits."""
        return math.floor(self.free_vcpu() / (vcpu + self.assumptions.queue_proxy_vcpu) + 1e-9)

    def capacity(self, vcpu: float) -> int | None:
        return None if self.max_nodes is None else self.max_nodes * self.per_node(vcpu)

    @field_validator("vcpu")
    @classmethod
    def _vcpu(cls, v: list[float]) -> list[float]:
        return _grid(v, 0.05, 64, "a replica's CPU")

    @field_validator("min_scale")
    @classmethod
    def _min(cls, v: list[int]) -> list[int]:
        return _grid(v, 0, 1000, "minReplicas")

    @field_validator("target")
    @classmethod
    def _target(cls, v: list[float]) -> list[float]:
        return _grid(v, 0.01, 1000, "the autoscaling target")

    @field_validator("container_concurrency")
    @classmethod
    def _cc(cls, v: list[int]) -> list[int]:
        return _grid(v, 0, 1000, "containerConcurrency")

    @field_validator("max_batch_size")
    @classmethod
    def _batch(cls, v: list[int]) -> list[int]:
        return _grid(v, 1, 1024, "maxBatchSize")

    @field_validator("scale_to_zero_retention_s")
    @classmethod
    def _retention(cls, v: list[float]) -> list[float]:
        return _grid(v, 0, 3600, "scaleToZeroRetention", " s")

    @field_validator("parallel_inferences")
    @classmethod
    def _parallel(cls, v: list[int]) -> list[int]:
        return _grid(v, 1, 64, "parallelInferences")

    @model_validator(mode="after")
    def _known_node(self) -> Knative:
        from zeroserve.advise.pricing import NODES

        if self.node not in NODES:
            raise ValueError(f"node: unknown node {self.node!r}; known: {', '.join(NODES)}")
        if max(self.min_scale) > self.max_scale:
            raise ValueError(f"min_scale {max(self.min_scale)} exceeds max_scale {self.max_scale}")
        big = max(self.vcpu)
        if not self.per_node(big):
            raise ValueError(
                f"vcpu {big:g}: a replica (with its queue-proxy's {self.assumptions.queue_proxy_vcpu:g}) "
                f"does not fit a node with {self.free_vcpu():g} CPU free ({self.node}"
                + (", node_free_vcpu" if self.node_free_vcpu is not None else "")
                + ")"
            )
        for ms in self.min_scale:
            for v in self.vcpu:
                room = self.capacity(v)
                if room is not None and ms > room:
                    raise ValueError(
                        f"min_scale {ms} at vcpu {v:g}: {self.max_nodes} node(s) fit only {room} replica(s)"
                    )
        return self

    def configs(self) -> list[dict[str, Any]]:
        keys = (
            "vcpu",
            "min_scale",
            "target",
            "container_concurrency",
            "max_batch_size",
            "parallel_inferences",
        )
        out = []
        for values in itertools.product(*(getattr(self, k) for k in keys), self.scale_to_zero_retention_s):
            knobs = dict(zip(keys, values[:-1], strict=True))
            knobs["scale_to_zero_retention_s"] = values[-1]
            # Retention only matters when the service may reach zero.
            if knobs["min_scale"] > 0 and values[-1] != self.scale_to_zero_retention_s[0]:
                continue
            if knobs["container_concurrency"] and knobs["max_batch_size"] > knobs["container_concurrency"]:
                continue
            if knobs["parallel_inferences"] > 1 and knobs["max_batch_size"] > 1:
                continue  # the simulation batches on one inference at a time
            out.append(knobs)
        return out


class LambdaAssumptions(_Strict):
    vcpu_per_mb: float = Field(
        1 / 1769, gt=0, description=f"CPU in proportion to memory, 1 vCPU at 1,769 MB: {LAMBDA_MEMORY_DOC}."
    )
    init_overhead_ms: float = Field(
        250,
        ge=0,
        description="Sandbox and runtime start before the handler module's own init (measured by the "
        f"profile); {ESTIMATE} (CloudWatch's REPORT line: Init Duration minus the profile's init). Part of "
        "the INIT phase, so added to the cold request's latency and billed with the handler's init: AWS "
        "bills on-demand functions' whole Init Duration since 2025-08-01 (AWS Compute Blog, 'AWS Lambda "
        "standardizes billing for INIT Phase', 2025-04-29).",
    )
    invoke_overhead_ms: float = Field(
        10, ge=0, description=f"Function URL front end and invoke per request; {ESTIMATE}."
    )
    idle_reclaim_s: float = Field(
        600,
        gt=0,
        description="An idle execution environment is reclaimed after this; AWS does not document it, "
        "public measurements see 5-15 minutes; an estimate.",
    )
    concurrency_limit: int = Field(
        1000, ge=1, description=f"The account's default concurrent executions, {LAMBDA_QUOTAS_DOC}."
    )


class Lambda(_Strict):
    """An AWS Lambda function: one request per execution environment."""

    enabled: bool = True
    memory_mb: list[int] = Field([1024, 1769, 3008])
    provisioned_concurrency: list[int] = Field([0, 1])
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    assumptions: LambdaAssumptions = LambdaAssumptions()

    @field_validator("memory_mb")
    @classmethod
    def _memory(cls, v: list[int]) -> list[int]:
        return _grid(v, 128, 10240, "Lambda memory", " MB")

    @field_validator("provisioned_concurrency")
    @classmethod
    def _pc(cls, v: list[int]) -> list[int]:
        return _grid(v, 0, 1000, "provisioned concurrency")

    def vcpu(self, memory_mb: int) -> float:
        # 10,240 MB gets 6 vCPUs, the documented maximum.
        return min(6.0, memory_mb * self.assumptions.vcpu_per_mb)

    def configs(self) -> list[dict[str, Any]]:
        return [
            {"memory_mb": m, "provisioned_concurrency": p}
            for m, p in itertools.product(self.memory_mb, self.provisioned_concurrency)
        ]


class CloudRunAssumptions(_Strict):
    idle_retention_s: float = Field(
        900, gt=0, description=f"Idle instances are kept up to 15 minutes: {CLOUD_RUN_SCALING_DOC}."
    )
    startup_overhead_ms: float = Field(
        500, ge=0, description=f"Instance start before the container's own init; {ESTIMATE}."
    )
    request_overhead_ms: float = Field(5, ge=0, description=f"Google's front end per request; {ESTIMATE}.")
    pending_timeout_s: float = Field(
        10,
        gt=0,
        description="A request with no instance to take it waits this long, then gets 429 "
        "(https://cloud.google.com/run/docs/troubleshooting).",
    )


class CloudRun(_Strict):
    """Cloud Run, or Cloud Functions 2nd gen (which is Cloud Run): requests share an instance up to its
    concurrency; the handler runs one inference at a time."""

    enabled: bool = True
    vcpu: list[float] = Field([1.0, 2.0])
    memory_gib: float = Field(2.0, ge=0.125, le=32)
    concurrency: list[int] = Field([1, 8, 80])
    min_instances: list[int] = Field([0, 1])
    max_instances: int = Field(100, ge=1, le=1000)
    assumptions: CloudRunAssumptions = CloudRunAssumptions()

    @field_validator("vcpu")
    @classmethod
    def _vcpu(cls, v: list[float]) -> list[float]:
        return _grid(v, 0.08, 8, "Cloud Run CPU")

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        return _grid(v, 1, 1000, "Cloud Run concurrency")

    @field_validator("min_instances")
    @classmethod
    def _min(cls, v: list[int]) -> list[int]:
        return _grid(v, 0, 1000, "Cloud Run min instances")

    def configs(self) -> list[dict[str, Any]]:
        out = []
        for v, c, m in itertools.product(self.vcpu, self.concurrency, self.min_instances):
            # Less than 1 vCPU allows concurrency 1 only: CLOUD_RUN_LIMITS_DOC.
            if v < 1 and c > 1:
                continue
            out.append({"vcpu": v, "concurrency": c, "min_instances": m})
        return out


class AlwaysOnAssumptions(_Strict):
    proxy_overhead_ms: float = Field(1.0, ge=0, description=f"A load balancer in front; {ESTIMATE}.")


class AlwaysOn(_Strict):
    """Servers that run whatever the load: self-rented nodes and managed real-time endpoints."""

    enabled: bool = True
    presets: list[str] = Field(["aws-c7i.xlarge", "sagemaker-ml.c5.xlarge"])
    replicas: list[int] = Field([1, 2])
    assumptions: AlwaysOnAssumptions = AlwaysOnAssumptions()

    @field_validator("presets")
    @classmethod
    def _presets(cls, v: list[str]) -> list[str]:
        from zeroserve.advise.pricing import NODES

        unknown = [p for p in v if p not in NODES]
        if unknown:
            raise ValueError(f"unknown preset {unknown[0]!r}; known: {', '.join(NODES)}")
        return list(dict.fromkeys(v))

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: list[int]) -> list[int]:
        return _grid(v, 1, 1000, "replicas")

    def configs(self) -> list[dict[str, Any]]:
        return [{"preset": p, "replicas": n} for p, n in itertools.product(self.presets, self.replicas)]


class Platforms(_Strict):
    knative: Knative = Knative()
    lambda_: Lambda = Field(Lambda(), alias="lambda")
    cloud_run: CloudRun = CloudRun()
    always_on: AlwaysOn = AlwaysOn()

    def enabled(self) -> dict[str, Any]:
        out = {
            "knative": self.knative,
            "lambda": self.lambda_,
            "cloud_run": self.cloud_run,
            "always_on": self.always_on,
        }
        return {k: v for k, v in out.items() if v.enabled}


class ProfileSettings(_Strict):
    batch_sizes: list[int] = Field([1], description="Batch sizes to time; the runtime's batching uses them.")
    requests: int = Field(
        100, ge=5, le=10_000, description="Timed requests per point (after warm-up); the tail needs many."
    )
    max_point_s: float = Field(8.0, gt=0, description="Stop timing a point after this many seconds.")
    cpu_limits: Literal["cgroup", "none"] = Field(
        "cgroup",
        description="cgroup: each point runs under a cgroup v1/v2 CPU quota, as a container would (needs "
        "root); none: unconstrained, service time scaled by 1/vCPU below the machine's cores.",
    )
    vcpus: list[float] | None = Field(
        None, description="CPU quotas to profile; unset: every distinct vCPU the platforms ask for."
    )
    gap_ms: float = Field(
        20.0,
        ge=0,
        description="Idle time between timed requests: open-loop traffic lets the server idle, and an idle "
        "server answers slower than one kept busy back to back.",
    )
    stall_factor: float = Field(
        10.0,
        gt=1,
        description="Samples over this many times the median are dropped as stalls of a shared machine.",
    )
    cache_dir: Path = Field(
        Path("~/.cache/zeroserve/advise"), description="Profiles are kept here by model sha256."
    )

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        v = _grid(v, 1, 1024, "batch size")
        return v if 1 in v else [1, *v]


class AdviseFile(_Strict):
    model: ModelFile
    payload: Literal["auto"] | Path | dict[str, Any] = Field(
        "auto", description="One OIP v2 request (a JSON file or inline), or auto: zeros of the model's shape."
    )
    workload: AdviseWorkload
    objectives: Objectives
    platforms: Platforms = Platforms()
    profile: ProfileSettings = ProfileSettings()
    seed: int = Field(0, description="Seeds the service times drawn from the profile.")

    @model_validator(mode="after")
    def _some_platform(self) -> AdviseFile:
        if not self.platforms.enabled():
            raise ValueError("platforms: every platform is disabled; enable at least one")
        return self


class Loaded(BaseModel):
    """A validated advise file with its paths resolved."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: AdviseFile
    model_path: Path
    model_sha256: str
    payload: dict[str, Any]
    workload: Any
    base_dir: Path

    def arrivals(self) -> np.ndarray:
        return np.asarray(self.workload.arrivals(), dtype=float)


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("mmpp", "constant", "step", "sporadic", "trace", "function-after[_known_node()]"):
            continue
        elif str(item).startswith(("function-", "literal[", "json-or-python", "is-instance", "lax-or")):
            continue
        else:
            parts.append(f".{'lambda' if item == 'lambda_' else item}")
    return "".join(parts).lstrip(".") or "(top level)"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse(raw: Any, source: str = "advise file") -> AdviseFile:
    if not isinstance(raw, dict):
        raise AdviseFileError(f"{source}: expected a mapping with model, workload and objectives")
    try:
        return AdviseFile.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{_location(err['loc'])}: {msg}")
        raise AdviseFileError(
            f"{source}: invalid advise file\n  " + "\n  ".join(dict.fromkeys(lines))
        ) from None


def resolve(spec: AdviseFile, base_dir: Path, source: str = "advise file") -> Loaded:
    from zeroserve.advise.profile import auto_payload

    try:
        model_path = spec.model.path.expanduser()
        model_path = model_path if model_path.is_absolute() else base_dir / model_path
        if not model_path.is_file():
            raise AdviseFileError(f"model.path: {model_path} does not exist")
        sha = sha256_of(model_path)
        if spec.model.sha256 and spec.model.sha256.lower() != sha:
            raise AdviseFileError(f"model.sha256: {model_path} has sha256 {sha}, not {spec.model.sha256}")
        if spec.payload == "auto":
            payload = auto_payload(model_path)
        else:
            from zeroserve_loadgen.targets import BenchFileError, load_payload

            holder = type("P", (), {"payload": spec.payload})()
            try:
                payload = load_payload(holder, base_dir)  # type: ignore[arg-type]
            except BenchFileError as e:
                raise AdviseFileError(str(e)) from None
        workload = spec.workload.load(base_dir) if isinstance(spec.workload, Trace) else spec.workload
        if len(workload.arrivals()) == 0:
            raise AdviseFileError("workload: it sends no request at all (every rate is 0?)")
    except AdviseFileError as e:
        raise AdviseFileError(f"{source}: {e}") from None
    return Loaded(
        spec=spec,
        model_path=model_path,
        model_sha256=sha,
        payload=payload,
        workload=workload,
        base_dir=base_dir,
    )


def load(path: Path) -> Loaded:
    """Parse, validate and resolve an advise file; every error names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise AdviseFileError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise AdviseFileError(f"{path}: not valid YAML: {e}") from None
    return resolve(parse(raw, str(path)), path.parent, str(path))


LADDER = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def profile_vcpus(spec: AdviseFile, cores: int) -> list[float]:
    """The CPU quotas to profile: the ladder 0.25, 0.5, 1, 2, ... from the rung at or below the smallest
    vCPU a configuration asks for to the rung at or above the largest, capped at this machine's cores
    (beyond them nothing can be measured; the simulation uses the largest point). Between rungs the
    profile interpolates in log-log, which keeps a sweep of a dozen Lambda memory sizes to a few points."""
    if spec.profile.vcpus:
        return sorted({min(float(cores), max(0.05, round(v, 2))) for v in spec.profile.vcpus})
    wanted: set[float] = set()
    p = spec.platforms
    if p.knative.enabled:
        wanted.update(p.knative.vcpu)
    if p.cloud_run.enabled:
        wanted.update(p.cloud_run.vcpu)
    if p.lambda_.enabled:
        wanted.update(p.lambda_.vcpu(m) for m in p.lambda_.memory_mb)
    if p.always_on.enabled:
        from zeroserve.advise.pricing import NODES

        wanted.update(NODES[n].vcpu for n in p.always_on.presets)
    wanted = {round(v, 2) for v in wanted}  # 1769 MB x (1 / 1769) is 0.99999..., not below 1
    low, high = min(wanted), min(max(wanted), float(cores))
    start = max([r for r in LADDER if r <= low] or [LADDER[0]])
    stop = min([r for r in LADDER if r >= high] or [LADDER[-1]])
    return sorted({min(float(cores), r) for r in LADDER if start <= r <= stop})
