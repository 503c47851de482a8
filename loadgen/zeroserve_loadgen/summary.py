"""From samples to the comparison: per-target figures, cold starts told apart, cost per 1M inferences, and
what a reader must be warned about. Pure: no I/O, no rendering (that is `render`)."""

from __future__ import annotations

import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from zeroserve_loadgen.plan import RunPlan, Sample
from zeroserve_loadgen.pricing import PRICES_RECORDED, Invocation, NodePricing, cost_per_million
from zeroserve_loadgen.replicas import Recorded, series
from zeroserve_loadgen.targets import Target

LATE_P90_S = 0.010  # one in ten sends this late: the load generator, not the workload, set the pace
HELD_BACK_S = 1.0  # any send this late: the in-flight limit held it back


@dataclass
class TargetReport:
    name: str
    kind: str
    url: str
    planned: int = 0
    requests: int = 0
    successes: int = 0
    success_ratio: float | None = None
    throughput_rps: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50 p90 p99 max, successes only
    warm_latency_ms: dict[str, float | None] = field(default_factory=dict)
    cold_latency_ms: dict[str, float | None] = field(default_factory=dict)
    cold_starts: int = 0
    cold_by_header: int = 0
    cold_by_gap: int = 0
    server_ms_p50: float | None = None
    send_lag_ms: dict[str, float | None] = field(default_factory=dict)
    cost_per_1m_usd: float | None = None
    pricing: str = ""
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    unreachable: str | None = None
    # Only for a target with `replicas:` in the bench file: (t, ready, total) from the Kubernetes API.
    replicas: list[dict[str, float | int]] | None = None
    max_replicas: int | None = None
    replica_errors: list[str] | None = None
    replica_seconds: float | None = None
    # Where the target names who answered (Knative: the runtime's replica and revision headers): answers
    # per replica, and per revision with the first and last second it answered in.
    answered_by: dict[str, int] | None = None
    revisions: dict[str, dict[str, float]] | None = None


REPLICA_FIELDS = ("replicas", "max_replicas", "replica_errors", "replica_seconds")


def _pcts(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max() * 1000)}


def cold_flags(samples: list[Sample], target: Target) -> tuple[np.ndarray, np.ndarray]:
    """(by header, by gap) per sample, in the order given.

    By header: the target flagged the first answer of a fresh process, and the request arrived soon
    enough after ready to have waited for the start. By gap: sent after the target had no request in
    flight for longer than its idle window (the first request of the run counts: nothing came before)."""
    max_age = target.cold_start_max_ready_age_s
    header = np.array(
        [s.cold and (s.ready_age_s < 0 or s.ready_age_s <= max_age) for s in samples], dtype=bool
    )
    gap = np.zeros(len(samples), dtype=bool)
    if target.idle_window_s is not None and samples:
        order = sorted(range(len(samples)), key=lambda i: samples[i].sent_s)
        busy_until = -np.inf
        for i in order:
            s = samples[i]
            gap[i] = s.sent_s - busy_until > target.idle_window_s
            busy_until = max(busy_until, s.sent_s + s.latency_s)
    return header, gap


def summarize(
    target: Target, samples: list[Sample], window: tuple[float, float], planned: int
) -> TargetReport:
    r = TargetReport(target.name, target.kind, _without_credentials(target.url), planned=planned)
    start, end = window
    # A saturated generator or slow target runs past the planned window: what was held is what counts.
    r.wall_s = max([end, *(s.sent_s + s.latency_s for s in samples)]) - start
    r.requests = len(samples)
    if not samples:
        return r
    ok = np.array([s.ok for s in samples], dtype=bool)
    latency = np.array([s.latency_s for s in samples])
    header, gap = cold_flags(samples, target)
    cold = header | gap
    r.successes = int(ok.sum())
    r.success_ratio = r.successes / r.requests
    r.throughput_rps = r.successes / r.wall_s if r.wall_s > 0 else 0.0
    r.latency_ms = _pcts(latency[ok])
    r.warm_latency_ms = _pcts(latency[ok & ~cold])
    r.cold_latency_ms = _pcts(latency[ok & cold])
    r.cold_starts, r.cold_by_header, r.cold_by_gap = int(cold.sum()), int(header.sum()), int(gap.sum())
    server = np.array([s.server_s for s in samples])
    if (server[ok] >= 0).any():
        r.server_ms_p50 = float(np.median(server[ok & (server >= 0)]) * 1000)
    r.send_lag_ms = _pcts(np.array([s.sent_s - s.scheduled_s for s in samples]))
    r.errors = dict(Counter(s.error for s in samples if s.error).most_common(5))
    named = [s for s in samples if s.ok and s.replica]
    if named:
        r.answered_by = dict(Counter(s.replica for s in named))
    revised = [s for s in samples if s.ok and s.revision]
    if revised:
        r.revisions = {}
        for s in sorted(revised, key=lambda s: s.sent_s):
            seen = r.revisions.setdefault(s.revision, {"answers": 0, "first_s": s.sent_s, "last_s": s.sent_s})
            seen["answers"] += 1
            seen["last_s"] = s.sent_s
    pricing = target.effective_pricing()
    r.pricing = pricing.describe()
    # Only requests the platform answered were invoked (and billed). Billed time is the target's own
    # when it says, else the client's latency, an upper bound. A fresh process's init is billed with its
    # first answer, whether or not that request waited for it: the platform bills it once either way.
    invocations = [
        Invocation(
            duration_s=s.server_s if s.server_s >= 0 else s.latency_s,
            init_s=s.init_s if s.cold and s.init_s > 0 else 0.0,
        )
        for s in samples
        if s.status
    ]
    r.cost_per_1m_usd = cost_per_million(pricing, invocations, r.successes, r.wall_s)
    return r


def _without_credentials(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Report:
    plan: RunPlan
    targets: list[TargetReport]
    samples: list[Sample]
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    workers: int = 1
    run_errors: list[str] = field(default_factory=list)
    start_epoch_s: float | None = None  # wall-clock time of t = 0, to line up with the cluster's own times

    @cached_property
    def cold_start_flags(self) -> np.ndarray:
        """Per sample, in report order: counted as a cold start (by header or by gap). Computed once:
        both the samples CSV and the plots need it."""
        out = np.zeros(len(self.samples), dtype=bool)
        for k, target in enumerate(self.plan.targets):
            idx = [i for i, s in enumerate(self.samples) if s.target == k]
            header, gap = cold_flags([self.samples[i] for i in idx], target)
            out[idx] = header | gap
        return out

    def warnings(self) -> list[str]:
        out = list(self.run_errors)
        for t in self.targets:
            if t.unreachable:
                out.append(f"{t.name}: not run, {t.unreachable}")
                continue
            if t.requests < t.planned:
                out.append(f"{t.name}: only {t.requests} of {t.planned} planned requests were sent")
            for e in t.replica_errors or []:
                out.append(f"{t.name}: replica count: {e}")
            if t.requests and not t.successes:
                out.append(f"{t.name}: no request succeeded ({next(iter(t.errors), 'unknown error')})")
            # One stall of the machine makes a few sends late; one in ten late, or any held back by a
            # second, means the offered rate was not met.
            p90, worst = t.send_lag_ms.get("p90"), t.send_lag_ms.get("max")
            if p90 is not None and p90 > LATE_P90_S * 1000:
                out.append(
                    f"{t.name}: 10% of sends left over {p90:.0f} ms late; the load generator was saturated "
                    "(add workers) and the offered rate was not met"
                )
            elif worst is not None and worst > HELD_BACK_S * 1000:
                out.append(
                    f"{t.name}: a send left {worst / 1000:.1f} s late: all its in-flight slots were taken "
                    "(raise --max-in-flight); its latency from the schedule is higher than reported"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan.model_dump(mode="json", exclude={"payload"})
        for t in plan["targets"]:
            # Header values may be API keys; URLs may carry user:password. Neither goes in a report.
            t["headers"] = dict.fromkeys(t["headers"], "<redacted>")
            t["url"] = _without_credentials(t["url"])
        return {
            "started": self.started,
            "host": platform.node(),
            "workers": self.workers,
            "prices_recorded": PRICES_RECORDED,
            "start_epoch_s": self.start_epoch_s,
            "plan": plan,
            "targets": [self._target_dict(t) for t in self.targets],
            "warnings": self.warnings(),
        }

    @staticmethod
    def _target_dict(t: TargetReport) -> dict[str, Any]:
        out = asdict(t)
        if t.replicas is None:  # not asked for: absent rather than empty, which would read as zero pods
            for key in REPLICA_FIELDS:
                del out[key]
        for key in ("answered_by", "revisions"):
            if out[key] is None:  # the target named nobody: absent, as above
                del out[key]
        return out


def replica_seconds(samples: list[dict[str, float | int]], wall_s: float) -> float:
    """The area under the count of scheduled replicas (ready or starting; not Pending ones, which no node
    has room for) from 0 to the end of the run: what a scaled self-hosted target held."""
    total = 0.0
    for here, after in zip(samples, [*samples[1:], None], strict=True):
        start = min(float(here["t"]), wall_s)
        end = wall_s if after is None else min(float(after["t"]), wall_s)
        total += max(0.0, end - start) * int(here.get("scheduled", here["total"]))
    return total


def add_replicas(
    report: TargetReport, recorded: Recorded, start_epoch_s: float, target: Target | None = None
) -> None:
    report.replicas = series(recorded, start_epoch_s)
    report.max_replicas = max((int(s["total"]) for s in report.replicas), default=None)
    report.replica_errors = list(recorded.errors)
    if report.replicas:
        report.replica_seconds = replica_seconds(report.replicas, report.wall_s)
    pricing = target.effective_pricing() if target is not None else None
    if isinstance(pricing, NodePricing) and pricing.replica_cpu and report.replica_seconds is not None:
        # Scale to zero shows in the cost: the replicas held, not a node for the whole run.
        if report.successes:
            cost = pricing.replica_cost(report.replica_seconds, report.wall_s)
            report.cost_per_1m_usd = cost / report.successes * 1e6


def build_report(
    plan: RunPlan,
    samples: list[Sample],
    planned: list[int],
    workers: int = 1,
    run_errors: list[str] | None = None,
    replicas: dict[str, Recorded] | None = None,
    start_epoch_s: float | None = None,
) -> Report:
    windows = plan.windows()
    reports = []
    for k, target in enumerate(plan.targets):
        mine = [s for s in samples if s.target == k]
        reports.append(summarize(target, mine, windows[k], planned[k]))
        if replicas and target.name in replicas and start_epoch_s is not None:
            add_replicas(reports[-1], replicas[target.name], start_epoch_s, target)
    return Report(
        plan,
        reports,
        samples,
        workers=workers,
        run_errors=list(run_errors or []),
        start_epoch_s=start_epoch_s,
    )
