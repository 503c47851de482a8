"""Every configuration of every platform: its service times from the profile, simulated on the same
arrivals, priced, and judged against the objectives."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from zeroserve.advise import pricing
from zeroserve.advise.config import AdviseFile, Objectives
from zeroserve.advise.profile import Profile
from zeroserve.advise.simulate import (
    KPA,
    SimResult,
    averaged,
    draw,
    simulate_cloud_run,
    simulate_lambda,
    simulate_pool,
)

PLATFORM_NAMES = {
    "knative": "Knative",
    "lambda": "AWS Lambda",
    "cloud_run": "Cloud Run",
    "always_on": "Always-on",
}
MONTH_S = 30 * 86400


@dataclass
class Candidate:
    platform: str
    knobs: dict[str, Any]
    p50_ms: float
    p99_ms: float
    success_ratio: float
    cold_share: float
    cold_requests: int
    starts: float
    max_replicas: int
    cost_usd: float
    cost_per_1m_usd: float
    wall_s: float
    replica_seconds: float = 0.0
    priced_as: str = ""  # how the cost was reached where a platform's price is not one list price
    misses: dict[str, float] = field(default_factory=dict)  # objective -> how far off (ratio > 1 = miss)
    sim: SimResult | None = None

    @property
    def meets(self) -> bool:
        return not self.misses

    @property
    def monthly_usd(self) -> float:
        return self.cost_usd * MONTH_S / self.wall_s

    def label(self) -> str:
        return ", ".join(f"{k}={_fmt_knob(v)}" for k, v in self.knobs.items())

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "sim"}
        out["meets"] = self.meets
        out["monthly_usd"] = self.monthly_usd
        return _finite(out)


def _fmt_knob(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _finite(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def judge(sim: SimResult, objectives: Objectives) -> tuple[float, float, float, float, dict[str, float]]:
    p50, p99 = sim.percentiles_ms()
    n = len(sim.ok)  # every run's requests, when sim pools runs
    success = float(sim.ok.mean()) if n else 0.0
    cold_share = float(sim.cold.mean()) if n else 0.0
    misses = {}
    if p99 > objectives.p99_ms:
        misses["p99_ms"] = p99
    if success < objectives.min_success_ratio:
        misses["min_success_ratio"] = success
    if objectives.max_cold_start_share is not None and cold_share > objectives.max_cold_start_share:
        misses["max_cold_start_share"] = cold_share
    return p50, p99, success, cold_share, misses


class Sweep:
    """Holds the arrivals, the common random numbers and the profile; simulates one configuration at a
    time."""

    def __init__(self, spec: AdviseFile, profile: Profile, arrivals: np.ndarray, wall_s: float) -> None:
        self.spec = spec
        self.profile = profile
        self.arr = np.asarray(arrivals, dtype=float)
        self.wall = wall_s
        self.u = np.random.default_rng([spec.seed, 2]).random(len(self.arr))
        self._svc: dict[tuple[str, float, int], np.ndarray] = {}

    def service(self, kind: str, vcpu: float, batch: int = 1) -> np.ndarray:
        key = (kind, round(vcpu, 4), batch)
        if key not in self._svc:
            fn = self.profile.runtime_service if kind == "runtime" else self.profile.handler_service
            self._svc[key] = draw(fn(vcpu, batch), self.u)
        return self._svc[key]

    def batch_ratio(self, vcpu: float, up_to: int) -> list[float]:
        """Time of a batch of b relative to one request, b = 0..up_to, interpolated between profiled sizes
        (beyond the largest: linear in b, no further saving)."""
        sizes = self.profile.batch_sizes()
        meds = [float(np.median(self.profile.runtime_service(vcpu, b))) for b in sizes]
        one = meds[0]
        out = [1.0]
        for b in range(1, up_to + 1):
            if b <= sizes[-1]:
                out.append(float(np.interp(b, sizes, meds)) / one)
            else:
                out.append(meds[-1] / one * b / sizes[-1])
        return out

    def run(self, platform: str, knobs: dict[str, Any]) -> Candidate:
        sim, cost, priced_as = getattr(self, f"_{platform}")(knobs)
        p50, p99, success, cold_share, misses = judge(sim, self.spec.objectives)
        return Candidate(
            platform=platform,
            knobs=knobs,
            p50_ms=p50,
            p99_ms=p99,
            success_ratio=success,
            cold_share=cold_share,
            cold_requests=round(sim.cold_requests),
            starts=sim.starts,
            max_replicas=sim.max_replicas,
            cost_usd=cost,
            cost_per_1m_usd=pricing.per_million(cost, sim.successes),
            wall_s=sim.wall_s,
            replica_seconds=sim.scheduled_replica_seconds,
            priced_as=priced_as,
            misses=misses,
            sim=sim,
        )

    def _knative(self, k: dict[str, Any]) -> tuple[SimResult, float, str]:
        p = self.spec.platforms.knative
        a = p.assumptions
        vcpu = k["vcpu"]
        svc = self.service("runtime", vcpu)
        ratio = self.batch_ratio(vcpu, k["max_batch_size"]) if k["max_batch_size"] > 1 else None
        parallel = k.get("parallel_inferences", 1)
        pratio = self.profile.parallel_ratio(vcpu, parallel) if parallel > 1 else None
        kpa = KPA(
            target=k["target"],
            target_utilization=a.target_utilization,
            stable_window_s=a.stable_window_s,
            panic_window_percentage=a.panic_window_percentage,
            panic_threshold_percentage=a.panic_threshold_percentage,
            tick_s=a.tick_s,
            scale_to_zero_grace_s=a.scale_to_zero_grace_s,
            retention_s=k["scale_to_zero_retention_s"],
            max_scale_down_rate=a.max_scale_down_rate,
            target_burst_capacity=a.target_burst_capacity,
        )
        cold_s = a.pod_start_s + self.profile.runtime_cold_s(vcpu)
        capacity = p.capacity(vcpu)
        # The autoscaler ticks at a phase the arrivals do not know, and near the scale-to-zero edge one
        # tick decides whether a request finds a replica: the prediction is the mean over evenly spaced
        # phases, not one arbitrary phase's luck.
        runs = [
            simulate_pool(
                self.arr,
                svc,
                cold_s=cold_s,
                overhead_s=a.proxy_overhead_ms / 1000,
                timeout_s=self.spec.objectives.timeout_s,
                wall_s=self.wall,
                min_scale=k["min_scale"],
                max_scale=p.max_scale,
                kpa=replace(kpa, tick_phase_s=a.tick_s * phase / a.tick_phases),
                container_concurrency=k["container_concurrency"],
                max_batch=k["max_batch_size"],
                batch_ratio=ratio,
                capacity=capacity,
                drain_s=a.termination_drain_s,
                parallel=parallel,
                parallel_ratio=pratio,
            )
            for phase in range(a.tick_phases)
        ]
        sim = averaged(runs)
        # Priced as the replicas pack, by the same rule that bounds the room: the queue-proxy's request and
        # the node's reserved CPU count in both.
        per_node = p.per_node(vcpu)
        cost = pricing.knative_cost(
            p.node, per_node, sim.scheduled_replica_seconds, p.fixed_nodes, sim.wall_s
        )
        return sim, cost, pricing.knative_priced_as(p.node, per_node, vcpu, a.queue_proxy_vcpu, p.free_vcpu())

    def _always_on(self, k: dict[str, Any]) -> tuple[SimResult, float, str]:
        node = pricing.NODES[k["preset"]]
        a = self.spec.platforms.always_on.assumptions
        sim = simulate_pool(
            self.arr,
            self.service("runtime", node.vcpu),
            cold_s=0.0,
            overhead_s=a.proxy_overhead_ms / 1000,
            timeout_s=self.spec.objectives.timeout_s,
            wall_s=self.wall,
            min_scale=k["replicas"],
            max_scale=k["replicas"],
        )
        sim.replica_seconds = k["replicas"] * sim.wall_s
        return sim, pricing.always_on_cost(k["preset"], k["replicas"], sim.wall_s), ""

    def _lambda(self, k: dict[str, Any]) -> tuple[SimResult, float, str]:
        p = self.spec.platforms.lambda_
        a = p.assumptions
        vcpu = p.vcpu(k["memory_mb"])
        sim = simulate_lambda(
            self.arr,
            self.service("handler", vcpu),
            init_s=self.profile.handler_init(vcpu),
            platform_init_s=a.init_overhead_ms / 1000,
            overhead_s=a.invoke_overhead_ms / 1000,
            provisioned=k["provisioned_concurrency"],
            reclaim_s=a.idle_reclaim_s,
            limit=a.concurrency_limit,
            timeout_s=self.spec.objectives.timeout_s,
            wall_s=self.wall,
        )
        assert sim.billed_s is not None and sim.init_s is not None and sim.on_provisioned is not None
        assert sim.throttled is not None
        answered = ~sim.throttled  # a throttled request is never invoked; a timed-out one is billed
        cost = pricing.lambda_cost(
            k["memory_mb"],
            p.architecture,
            sim.billed_s[answered],
            sim.init_s[answered],
            sim.on_provisioned[answered],
            k["provisioned_concurrency"],
            sim.wall_s,
        )
        return sim, cost, "whole Init Duration billed (AWS, since 2025-08-01)"

    def _cloud_run(self, k: dict[str, Any]) -> tuple[SimResult, float, str]:
        p = self.spec.platforms.cloud_run
        a = p.assumptions
        vcpu = k["vcpu"]
        sim = simulate_cloud_run(
            self.arr,
            self.service("handler", vcpu),
            cold_s=a.startup_overhead_ms / 1000 + self.profile.handler_init(vcpu),
            overhead_s=a.request_overhead_ms / 1000,
            concurrency=k["concurrency"],
            min_instances=k["min_instances"],
            max_instances=p.max_instances,
            retention_s=a.idle_retention_s,
            pending_timeout_s=a.pending_timeout_s,
            timeout_s=self.spec.objectives.timeout_s,
            wall_s=self.wall,
        )
        cost = pricing.cloud_run_cost(vcpu, p.memory_gib, sim.busy_s, sim.idle_min_s, len(sim.ok))
        return sim, cost, ""


def sweep(
    spec: AdviseFile,
    profile: Profile,
    arrivals: np.ndarray,
    wall_s: float,
    progress: Callable[[int, int], None] | None = None,
    keep_sims: bool = False,
) -> list[Candidate]:
    s = Sweep(spec, profile, arrivals, wall_s)
    jobs = [(name, knobs) for name, plat in spec.platforms.enabled().items() for knobs in plat.configs()]
    out = []
    for done, (name, knobs) in enumerate(jobs, 1):
        c = s.run(name, knobs)
        if not keep_sims:
            c.sim = None
        out.append(c)
        if progress:
            progress(done, len(jobs))
    return out
