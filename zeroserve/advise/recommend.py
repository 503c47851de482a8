"""From simulated candidates to advice: the ranking per platform, the cheapest configuration that meets
the objectives (overall and per platform), what no configuration meets and the closest miss, the
trade-offs in plain sentences, and the winner's settings for each platform."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from zeroserve.advise.config import AdviseFile, Objectives
from zeroserve.advise.sweep import PLATFORM_NAMES, Candidate

OBJECTIVE_TEXT = {
    "p99_ms": ("p99 latency", "at most {:g} ms", "{:.0f} ms"),
    "min_success_ratio": ("success ratio", "at least {:.2%}", "{:.3%}"),
    "max_cold_start_share": ("cold-start share", "at most {:.2%}", "{:.3%}"),
}


def _target(objectives: Objectives, name: str) -> float:
    return float(getattr(objectives, name))


def _miss_size(name: str, value: float, target: float) -> float:
    """How far off, relative: 0 meets it, 0.2 is 20% worse than asked."""
    if name == "min_success_ratio":
        return max(0.0, (target - value) / max(target, 1e-12))
    if target == 0:
        return math.inf if value > 0 else 0.0
    return max(0.0, value / target - 1)


def rank(cands: list[Candidate], objectives: Objectives) -> list[Candidate]:
    """Those that meet every objective first, cheapest first; then the rest by how little they miss."""

    def key(c: Candidate) -> tuple[bool, float, float]:
        return (not c.meets, c.cost_per_1m_usd if c.meets else total_miss(c, objectives), c.p99_ms)

    return sorted(cands, key=key)


def total_miss(c: Candidate, objectives: Objectives) -> float:
    return sum(_miss_size(k, v, _target(objectives, k)) for k, v in c.misses.items())


@dataclass
class Advice:
    objectives: Objectives
    by_platform: dict[str, list[Candidate]]
    winner: Candidate | None
    winners: dict[str, Candidate | None]
    unmet: list[str] = field(default_factory=list)  # what no configuration meets, with the closest miss
    tradeoffs: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)


def advise(
    spec: AdviseFile, cands: list[Candidate], model_sha256: str, model_name: str, threads_for: Any = None
) -> Advice:
    by_platform: dict[str, list[Candidate]] = {}
    for c in cands:
        by_platform.setdefault(c.platform, []).append(c)
    by_platform = {k: rank(v, spec.objectives) for k, v in by_platform.items()}
    winners = {k: next((c for c in v if c.meets), None) for k, v in by_platform.items()}
    meeting = [c for c in winners.values() if c is not None]
    winner = min(meeting, key=lambda c: c.cost_per_1m_usd) if meeting else None
    advice = Advice(spec.objectives, by_platform, winner, winners)
    if winner is None:
        advice.unmet = unmet(spec.objectives, cands)
    advice.tradeoffs = tradeoffs(spec, by_platform, winners, winner)
    advice.settings = settings(spec, by_platform, winners, model_sha256, model_name, threads_for)
    return advice


def unmet(objectives: Objectives, cands: list[Candidate]) -> list[str]:
    """Per objective that no configuration meets on its own: the closest miss. When each is met by some
    configuration but never all at once, say that, with the configuration that misses least."""
    out = []
    for name, (what, bound, fmt) in OBJECTIVE_TEXT.items():
        target = getattr(objectives, name)
        if target is None:
            continue
        if all(name in c.misses for c in cands):
            closest = min(cands, key=lambda c: _miss_size(name, c.misses[name], target))
            value = closest.misses[name]
            off = _miss_size(name, value, target)
            out.append(
                f"no configuration meets {what} {bound.format(target)}: the closest is "
                f"{PLATFORM_NAMES[closest.platform]} ({closest.label()}) at {fmt.format(value)}"
                + (f", {off:.0%} off" if math.isfinite(off) else "")
            )
    if not out and cands:
        closest = min(cands, key=lambda c: total_miss(c, objectives))
        missed = ", ".join(OBJECTIVE_TEXT[k][0] for k in closest.misses)
        out.append(
            "each objective is met by some configuration, but none meets all of them at once; the closest "
            f"is {PLATFORM_NAMES[closest.platform]} ({closest.label()}), which misses {missed}"
        )
    return out


def _twin(cands: list[Candidate], base: Candidate, **change: Any) -> Candidate | None:
    want = {**base.knobs, **change}
    return next((c for c in cands if c.knobs == want), None)


def _span(c: Candidate) -> str:
    """The simulated time, for counts that are not extrapolated: a run from nothing begins with cold
    starts a service that has been up all day would not have."""
    return f"{c.wall_s / 3600:.1f} h" if c.wall_s >= 3600 else f"{c.wall_s / 60:.0f} min"


def tradeoffs(
    spec: AdviseFile,
    by_platform: dict[str, list[Candidate]],
    winners: dict[str, Candidate | None],
    winner: Candidate | None,
) -> list[str]:
    out = []
    kn = by_platform.get("knative", [])
    base = winners.get("knative") or (kn[0] if kn else None)
    if base is not None:
        other = _twin(kn, base, min_scale=0 if base.knobs["min_scale"] else 1)
        if other is not None:
            warm, cold = (base, other) if base.knobs["min_scale"] else (other, base)
            extra = warm.monthly_usd - cold.monthly_usd
            saved = cold.cold_requests - warm.cold_requests
            out.append(
                f"Knative: minReplicas {warm.knobs['min_scale']} instead of 0 "
                f"{'adds' if extra >= 0 else 'saves'} ${abs(extra):,.2f} a month and removes "
                f"{saved:,d} cold-start waits ({cold.starts - warm.starts:,.0f} starts from zero) in the "
                f"{_span(cold)} simulated at this load (p99 {cold.p99_ms:,.0f} -> {warm.p99_ms:,.0f} ms)."
            )
    lam = by_platform.get("lambda", [])
    base = winners.get("lambda") or (lam[0] if lam else None)
    if base is not None:
        pcs = sorted({c.knobs["provisioned_concurrency"] for c in lam})
        if len(pcs) > 1:
            low = _twin(lam, base, provisioned_concurrency=pcs[0])
            high = _twin(lam, base, provisioned_concurrency=pcs[-1])
            if low is not None and high is not None:
                out.append(
                    f"Lambda at {base.knobs['memory_mb']} MB: provisioned concurrency {pcs[-1]} instead of "
                    f"{pcs[0]} adds ${high.monthly_usd - low.monthly_usd:,.2f} a month and removes "
                    f"{low.cold_requests - high.cold_requests:,d} of {low.cold_requests:,d} cold starts in "
                    f"the {_span(low)} simulated."
                )
        mems = sorted({c.knobs["memory_mb"] for c in lam})
        if len(mems) > 1:
            small = _twin(lam, base, memory_mb=mems[0])
            big = _twin(lam, base, memory_mb=mems[-1])
            if small is not None and big is not None:
                out.append(
                    f"Lambda memory {mems[-1]} MB instead of {mems[0]} MB (CPU follows memory) moves p50 "
                    f"from {small.p50_ms:,.1f} to {big.p50_ms:,.1f} ms and the cost per 1M from "
                    f"${small.cost_per_1m_usd:,.2f} to ${big.cost_per_1m_usd:,.2f}."
                )
    cr = by_platform.get("cloud_run", [])
    base = winners.get("cloud_run") or (cr[0] if cr else None)
    if base is not None:
        one = _twin(cr, base, concurrency=1)
        if one is not None and base.knobs["concurrency"] != 1:
            out.append(
                f"Cloud Run concurrency {base.knobs['concurrency']} instead of 1 starts "
                f"{one.starts - base.starts:,.0f} fewer instances and costs ${base.cost_per_1m_usd:,.2f} "
                f"instead of ${one.cost_per_1m_usd:,.2f} per 1M (requests queue inside an instance: "
                f"p99 {one.p99_ms:,.0f} -> {base.p99_ms:,.0f} ms)."
            )
    if winner is not None:
        for name, w in winners.items():
            if w is None or w is winner:
                continue
            out.append(
                f"{PLATFORM_NAMES[name]}'s cheapest that meets the objectives costs "
                f"{w.cost_per_1m_usd / winner.cost_per_1m_usd:,.1f}x the winner's "
                f"(${w.monthly_usd:,.2f} vs ${winner.monthly_usd:,.2f} a month at this load)."
            )
    for name, w in winners.items():
        if w is None and by_platform.get(name):
            best = by_platform[name][0]
            missed = ", ".join(OBJECTIVE_TEXT[k][0] for k in best.misses)
            out.append(
                f"No {PLATFORM_NAMES[name]} configuration meets the objectives; the closest misses {missed}."
            )
    return out


def modelservice_yaml(spec: AdviseFile, c: Candidate, sha: str, name: str, threads: int) -> str:
    import yaml

    scaling: dict[str, Any] = {
        "minReplicas": c.knobs["min_scale"],
        "maxReplicas": spec.platforms.knative.max_scale,
        "metric": "concurrency",
        "target": c.knobs["target"],
    }
    if c.knobs["container_concurrency"]:
        scaling["containerConcurrency"] = c.knobs["container_concurrency"]
    if c.knobs["scale_to_zero_retention_s"] and not c.knobs["min_scale"]:
        scaling["scaleToZeroRetention"] = f"{c.knobs['scale_to_zero_retention_s']:g}s"
    parallel = c.knobs.get("parallel_inferences", 1)
    runtime: dict[str, Any] = {"name": "onnx", "threads": max(1, threads // parallel)}
    if parallel > 1:
        runtime["parallelInferences"] = parallel
    if c.knobs["max_batch_size"] > 1:
        runtime["batching"] = {"maxBatchSize": c.knobs["max_batch_size"], "maxQueueDelayMs": 0}
    spec_doc = {
        "model": {"uri": f"s3://YOUR-BUCKET/models/{name}.onnx", "sha256": sha},
        "runtime": runtime,
        "resources": {"cpu": f"{c.knobs['vcpu']:g}", "memory": f"{spec.platforms.knative.memory_gib:g}Gi"},
        "scaling": scaling,
    }
    try:  # validated by the operator's own model when it is installed
        from zeroserve_operator.api import ModelServiceSpec

        spec_doc = ModelServiceSpec.model_validate(spec_doc).model_dump(
            by_alias=True, exclude_none=True, exclude_defaults=True, mode="json"
        )
        spec_doc["scaling"].setdefault("minReplicas", c.knobs["min_scale"])
    except ModuleNotFoundError:
        pass
    doc = {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name.lower().replace("_", "-").replace(".", "-")},
        "spec": spec_doc,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def settings(
    spec: AdviseFile,
    by_platform: dict[str, list[Candidate]],
    winners: dict[str, Candidate | None],
    sha: str,
    name: str,
    threads_for: Any = None,
) -> dict[str, str]:
    """The settings to deploy each platform's pick (its cheapest that meets the objectives, else its
    closest)."""
    out = {}
    pick = {p: w or (by_platform[p][0] if by_platform.get(p) else None) for p, w in winners.items()}
    fn = name.lower().replace("_", "-")
    if (c := pick.get("knative")) is not None:
        threads = threads_for(c.knobs["vcpu"]) if threads_for else max(1, math.ceil(c.knobs["vcpu"]))
        out["knative"] = modelservice_yaml(spec, c, sha, name, threads)
    if (c := pick.get("lambda")) is not None:
        lines = [
            f"aws lambda update-function-configuration --function-name {fn} --memory-size "
            f"{c.knobs['memory_mb']} --timeout {math.ceil(spec.objectives.timeout_s)}",
        ]
        if c.knobs["provisioned_concurrency"]:
            lines.append(
                f"aws lambda put-provisioned-concurrency-config --function-name {fn} --qualifier live "
                f"--provisioned-concurrent-executions {c.knobs['provisioned_concurrency']}"
            )
        out["lambda"] = "\n".join(lines)
    if (c := pick.get("cloud_run")) is not None:
        p = spec.platforms.cloud_run
        out["cloud_run"] = (
            f"gcloud run deploy {fn} --cpu {c.knobs['vcpu']:g} --memory {p.memory_gib:g}Gi --concurrency "
            f"{c.knobs['concurrency']} --min-instances {c.knobs['min_instances']} --max-instances "
            f"{p.max_instances} --timeout {math.ceil(spec.objectives.timeout_s)}"
        )
    if (c := pick.get("always_on")) is not None:
        out["always_on"] = f"{c.knobs['replicas']} x {c.knobs['preset']}, always on"
    return out
