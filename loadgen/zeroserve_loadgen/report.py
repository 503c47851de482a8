"""From samples to the comparison: per-target figures, cold starts told apart, cost per 1M inferences, and
the same result as a terminal table, JSON, CSV and a self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import io
import platform
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from zeroserve_loadgen.plan import RunPlan, Sample
from zeroserve_loadgen.pricing import PRICES_RECORDED, Invocation, cost_per_million
from zeroserve_loadgen.targets import Target

SLOW_SEND_S = 0.010  # a send this late means the load generator, not the target, set the pace


@dataclass
class TargetReport:
    name: str
    kind: str
    url: str
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
    send_lag_ms_p50: float | None = None
    send_lag_ms_p90: float | None = None
    send_lag_ms_p99: float | None = None
    cost_per_1m_usd: float | None = None
    pricing: str = ""
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    unreachable: str | None = None


def _pcts(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99]) * 1000
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max() * 1000)}


def cold_flags(samples: list[Sample], idle_window_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(by header, by gap) per sample, in the order given. By gap: sent after the target had no request
    in flight for longer than its idle window (the first request of the run counts: nothing came before)."""
    header = np.array([s.cold for s in samples], dtype=bool)
    gap = np.zeros(len(samples), dtype=bool)
    if idle_window_s is not None and samples:
        order = sorted(range(len(samples)), key=lambda i: samples[i].sent_s)
        busy_until = -np.inf
        for i in order:
            s = samples[i]
            gap[i] = s.sent_s - busy_until > idle_window_s
            busy_until = max(busy_until, s.sent_s + s.latency_s)
    return header, gap


def summarize(target: Target, samples: list[Sample], wall_s: float) -> TargetReport:
    r = TargetReport(target.name, target.kind, target.url, wall_s=wall_s)
    r.requests = len(samples)
    if not samples:
        return r
    ok = np.array([s.ok for s in samples], dtype=bool)
    latency = np.array([s.latency_s for s in samples])
    header, gap = cold_flags(samples, target.idle_window_s)
    cold = header | gap
    r.successes = int(ok.sum())
    r.success_ratio = r.successes / r.requests
    r.throughput_rps = r.successes / wall_s if wall_s > 0 else 0.0
    r.latency_ms = _pcts(latency[ok])
    r.warm_latency_ms = _pcts(latency[ok & ~cold])
    r.cold_latency_ms = _pcts(latency[ok & cold])
    r.cold_starts, r.cold_by_header, r.cold_by_gap = int(cold.sum()), int(header.sum()), int(gap.sum())
    server = np.array([s.server_s for s in samples])
    if (server[ok] >= 0).any():
        r.server_ms_p50 = float(np.median(server[ok & (server >= 0)]) * 1000)
    lag = np.array([s.sent_s - s.scheduled_s for s in samples])
    r.send_lag_ms_p50, r.send_lag_ms_p90, r.send_lag_ms_p99 = (
        float(v) for v in np.percentile(lag, [50, 90, 99]) * 1000
    )
    r.errors = dict(Counter(s.error for s in samples if s.error).most_common(5))
    pricing = target.effective_pricing()
    r.pricing = pricing.describe()
    # Only requests the platform answered were invoked (and billed); the server's own time is what it
    # bills when it says, else the client's latency, an upper bound.
    invocations = [
        Invocation(
            duration_s=s.server_s if s.server_s >= 0 else s.latency_s,
            init_s=s.init_s if s.cold and s.init_s > 0 else 0.0,
        )
        for s in samples
        if s.status
    ]
    r.cost_per_1m_usd = cost_per_million(pricing, invocations, r.successes, wall_s)
    return r


@dataclass
class Report:
    plan: RunPlan
    targets: list[TargetReport]
    samples: list[Sample]
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    workers: int = 1

    def warnings(self) -> list[str]:
        out = []
        for t in self.targets:
            if t.unreachable:
                out.append(f"{t.name}: not run, {t.unreachable}")
            elif t.requests and not t.successes:
                out.append(f"{t.name}: no request succeeded ({next(iter(t.errors), 'unknown error')})")
            # One stall of the machine makes a few sends late; one in ten late means the generator could
            # not keep up and the offered rate was not met.
            if t.send_lag_ms_p90 is not None and t.send_lag_ms_p90 > SLOW_SEND_S * 1000:
                out.append(
                    f"{t.name}: 10% of sends left over {t.send_lag_ms_p90:.0f} ms late; the load generator "
                    "was saturated (raise max_in_flight or add workers) and the offered rate was not met"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "host": platform.node(),
            "workers": self.workers,
            "prices_recorded": PRICES_RECORDED,
            "plan": self.plan.model_dump(mode="json", exclude={"payload"}),
            "targets": [asdict(t) for t in self.targets],
            "warnings": self.warnings(),
        }


def build_report(
    plan: RunPlan, samples: list[Sample], unreachable: dict[str, str], workers: int = 1
) -> Report:
    windows = plan.windows()
    reports = []
    for k, target in enumerate(plan.targets):
        mine = [s for s in samples if s.target == k]
        start, end = windows[k]
        r = summarize(target, mine, end - start)
        r.unreachable = unreachable.get(target.name)
        reports.append(r)
    return Report(plan, reports, samples, workers=workers)


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table_rows(report: Report) -> list[list[str]]:
    rows = []
    for t in report.targets:
        rows.append(
            [
                t.name,
                t.kind,
                str(t.requests),
                "-" if t.success_ratio is None else f"{t.success_ratio * 100:.1f}%",
                f"{t.throughput_rps:.1f}",
                _fmt(t.latency_ms.get("p50")),
                _fmt(t.latency_ms.get("p90")),
                _fmt(t.latency_ms.get("p99")),
                _fmt(t.latency_ms.get("max")),
                str(t.cold_starts),
                _fmt(t.cold_latency_ms.get("p50")),
                "-" if t.cost_per_1m_usd is None else f"${t.cost_per_1m_usd:,.2f}",
            ]
        )
    return rows


HEADERS = [
    "target",
    "kind",
    "requests",
    "success",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "cold",
    "cold p50 ms",
    "$/1M inf",
]


def print_table(report: Report, console: Any) -> None:
    from rich.table import Table

    table = Table(title="Zeroserve bench", title_justify="left")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i < 2 else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    for t in report.targets:
        if t.pricing:
            console.print(f"  {t.name}: priced as {t.pricing}")
    for w in report.warnings():
        console.print(f"[yellow]warning:[/] {w}")


def write_json(report: Report, path: Path) -> None:
    path.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))


def write_csv(report: Report, summary: Path, samples: Path) -> None:
    with summary.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "target",
                "kind",
                "requests",
                "successes",
                "success_ratio",
                "throughput_rps",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "max_ms",
                "cold_starts",
                "cold_p50_ms",
                "warm_p50_ms",
                "cost_per_1m_usd",
                "unreachable",
            ]
        )
        for t in report.targets:
            w.writerow(
                [
                    t.name,
                    t.kind,
                    t.requests,
                    t.successes,
                    t.success_ratio,
                    t.throughput_rps,
                    t.latency_ms.get("p50"),
                    t.latency_ms.get("p90"),
                    t.latency_ms.get("p99"),
                    t.latency_ms.get("max"),
                    t.cold_starts,
                    t.cold_latency_ms.get("p50"),
                    t.warm_latency_ms.get("p50"),
                    t.cost_per_1m_usd,
                    t.unreachable or "",
                ]
            )
    names = [t.name for t in report.plan.targets]
    with samples.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", *Sample._fields[1:]])
        for s in report.samples:
            w.writerow([names[s.target], *s[1:]])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: Report) -> tuple[str, str]:
    """Latency over time and latency CDF, one series per target, as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.name for t in report.plan.targets]
    over_time, ax1 = plt.subplots(figsize=(9, 3.6))
    cdf, ax2 = plt.subplots(figsize=(9, 3.6))
    try:
        for k, name in enumerate(names):
            mine = [s for s in report.samples if s.target == k and s.ok]
            if not mine:
                continue
            t = np.array([s.sent_s for s in mine])
            ms = np.array([s.latency_s for s in mine]) * 1000
            line = ax1.plot(t, ms, ".", markersize=3, alpha=0.6, label=name)[0]
            cold = [s for s in mine if s.cold]
            if cold:
                ax1.plot(
                    [s.sent_s for s in cold], [s.latency_s * 1000 for s in cold], "x", color=line.get_color()
                )
            ordered = np.sort(ms)
            ax2.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=name)
        ax1.set(
            xlabel="time since start (s)",
            ylabel="latency (ms)",
            yscale="log",
            title="Latency over time (x: cold)",
        )
        ax2.set(xlabel="latency (ms)", ylabel="fraction of requests", xscale="log", title="Latency CDF")
        for ax in (ax1, ax2):
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        return _png(over_time), _png(cdf)
    finally:
        plt.close(over_time)
        plt.close(cdf)


def write_html(report: Report, path: Path) -> None:
    over_time, cdf = plots(report)
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table_rows(report))
    pricing = "".join(f"<li>{e(t.name)}: {e(t.pricing)}</li>" for t in report.targets if t.pricing)
    warnings = "".join(f"<li>{e(w)}</li>" for w in report.warnings())
    workload = e(orjson.dumps(report.plan.workload.model_dump(mode="json")).decode())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Zeroserve bench {e(report.started)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ padding: .3rem .6rem; border-bottom: 1px solid #ddd; }}
td:nth-child(n+3), th:nth-child(n+3) {{ text-align: right; }} .warn {{ color: #a60; }}
code {{ background: #f4f4f4; padding: .1rem .3rem; }}
</style></head><body>
<h1>Zeroserve bench</h1>
<p>Started {e(report.started)} on {e(platform.node())}, {report.workers} worker(s), mode
<code>{e(report.plan.mode)}</code>, workload <code>{workload}</code>.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>Latency over successful requests, from send to last byte. Cold: flagged by the target's
<code>x-zeroserve-cold-start</code> header or sent after an idle gap longer than its window.
Cost per 1M successful inferences, at list prices recorded {PRICES_RECORDED}:</p><ul>{pricing}</ul>
{f'<h2>Warnings</h2><ul class="warn">{warnings}</ul>' if warnings else ""}
<h2>Latency over time</h2><img alt="latency over time" src="data:image/png;base64,{over_time}">
<h2>Latency CDF</h2><img alt="latency CDF" src="data:image/png;base64,{cdf}">
</body></html>
"""
    path.write_text(page)


def write_all(report: Report, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "csv": out_dir / "summary.csv",
        "samples": out_dir / "samples.csv",
        "html": out_dir / "report.html",
    }
    write_json(report, paths["json"])
    write_csv(report, paths["csv"], paths["samples"])
    write_html(report, paths["html"])
    return paths
