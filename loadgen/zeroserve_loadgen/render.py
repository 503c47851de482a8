"""The comparison as a terminal table, JSON, CSV and a self-contained HTML page with latency-over-time
and latency CDF plots, and replicas over time where the bench file asked for them (matplotlib PNGs,
embedded)."""

from __future__ import annotations

import base64
import csv
import html
import io
import platform
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from zeroserve_loadgen.plan import Sample
from zeroserve_loadgen.pricing import PRICES_RECORDED
from zeroserve_loadgen.summary import Report


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
                "-" if t.max_replicas is None else str(t.max_replicas),
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
    "max replicas",
    "$/1M inf",
]


def print_table(report: Report, console: Any) -> None:
    from rich.markup import escape
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
        console.print(f"[yellow]warning:[/] {escape(w)}")


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
                "max_replicas",
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
                    t.max_replicas,
                    t.unreachable or "",
                ]
            )
    names = [t.name for t in report.plan.targets]
    cold = report.cold_start_flags
    with samples.open("w", newline="") as f:
        w = csv.writer(f)
        # `cold` is the target's own header; `cold_start` is what the report counts (header or gap).
        w.writerow(["target", *Sample._fields[1:], "cold_start"])
        for s, c in zip(report.samples, cold.tolist(), strict=True):
            w.writerow([names[s.target], *s[1:], c])


def _png(fig: Any, tight: bool = True) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
    return base64.b64encode(buf.getvalue()).decode()


def write_replicas_csv(report: Report, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "t", "ready", "total", "scheduled"])
        for t in report.targets:
            for s in t.replicas or []:
                w.writerow([t.name, s["t"], s["ready"], s["total"], s.get("scheduled", s["total"])])


def _time_axes(*figs: Any) -> None:
    """Plots over time share a layout, so that their time axes line up on the page."""
    for fig in figs:
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.9)


MAX_COLD_MARKS = 200  # beyond this many, the lines would hide the steps


def plots(report: Report) -> tuple[str, str, str | None]:
    """Latency over time, latency CDF and, when recorded, replicas over time: one series per target,
    each target in the same colour in all three, as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [t.name for t in report.plan.targets]
    recorded = {t.name: t.replicas for t in report.targets if t.replicas}
    cold = report.cold_start_flags
    over_time, ax1 = plt.subplots(figsize=(9, 3.6))
    cdf, ax2 = plt.subplots(figsize=(9, 3.6))
    replicas, ax3 = plt.subplots(figsize=(9, 3.6)) if recorded else (None, None)
    try:
        ends = [s.sent_s for s in report.samples] + [s["t"] for r in recorded.values() for s in r]
        for k, name in enumerate(names):
            color = f"C{k % 10}"
            mine = [
                (s, c) for s, c in zip(report.samples, cold.tolist(), strict=True) if s.target == k and s.ok
            ]
            colds = [s for s, c in mine if c]
            if ax3 is not None and name in recorded:
                t = [s["t"] for s in recorded[name]]
                ax3.step(
                    t, [s["ready"] for s in recorded[name]], where="post", color=color, label=f"{name} ready"
                )
                ax3.step(
                    t,
                    [s["total"] for s in recorded[name]],
                    where="post",
                    color=color,
                    linestyle="--",
                    alpha=0.6,
                    label=f"{name} total",
                )
                for i, s in enumerate(colds[:MAX_COLD_MARKS]):
                    ax3.axvline(
                        s.sent_s,
                        color=color,
                        linestyle=":",
                        alpha=0.5,
                        label=f"{name} cold" if not i else None,
                    )
            if not mine:
                continue
            t = np.array([s.sent_s for s, _ in mine])
            ms = np.array([s.latency_s for s, _ in mine]) * 1000
            ax1.plot(t, ms, ".", markersize=3, alpha=0.6, label=name, color=color)
            if colds:
                ax1.plot(
                    [s.sent_s for s in colds],
                    [s.latency_s * 1000 for s in colds],
                    "x",
                    color=color,
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
        axes = [ax1, ax2]
        if ax3 is not None:
            ax3.set(
                xlabel="time since start (s)",
                ylabel="replicas",
                title="Replicas over time, from the Kubernetes API (solid: ready, dashed: total)",
            )
            ax3.set_ylim(bottom=-0.1)
            ax3.yaxis.set_major_locator(MaxNLocator(integer=True))
            hi = max(ends, default=1.0)
            for ax in (ax1, ax3):
                ax.set_xlim(-0.02 * hi, hi * 1.02)
            _time_axes(over_time, replicas)
            axes.append(ax3)
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        return (
            _png(over_time, tight=ax3 is None),
            _png(cdf),
            None if replicas is None else _png(replicas, tight=False),
        )
    finally:
        for fig in (over_time, cdf, replicas):
            if fig is not None:
                plt.close(fig)


def load_and_cost_plots(report: Report) -> tuple[str, str | None]:
    """The offered load (the schedule's sends per second, over the workload's rate) above each target's
    success ratio over time, on the latency plot's time axis; and cost per 1M inferences as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.name for t in report.plan.targets]
    fig, (load_ax, ok_ax) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True, height_ratios=[1, 1])
    bars = None
    try:
        sched = np.array([s.scheduled_s for s in report.samples])
        span = max([1.0, *(s.sent_s + s.latency_s for s in report.samples)])
        width = max(1.0, span / 120)  # about 120 bins, whatever the length of the run
        edges = np.arange(0, span + width, width)
        for k, name in enumerate(names):
            mine = np.array([s.target == k for s in report.samples], dtype=bool)
            if not mine.any():
                continue
            color = f"C{k % 10}"
            sent, _ = np.histogram(sched[mine], edges)
            load_ax.step(edges[:-1], sent / width, where="post", color=color, alpha=0.8, label=f"{name} sent")
            ok = np.array([s.ok for s in report.samples], dtype=bool)[mine]
            good, _ = np.histogram(sched[mine][ok], edges)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(sent > 0, good / np.maximum(sent, 1), np.nan)
            ok_ax.step(edges[:-1], ratio, where="post", color=color, label=name)
            cold = report.cold_start_flags[mine]
            for i, t in enumerate(sched[mine][cold][:MAX_COLD_MARKS]):
                ok_ax.axvline(
                    t, color=color, linestyle=":", alpha=0.4, label=f"{name} cold" if not i else None
                )
        workload = report.plan.workload
        for i, (start, end, rate) in enumerate(workload.segments()):
            for window_start, _ in report.plan.windows()[:1]:
                load_ax.hlines(
                    rate,
                    window_start + start,
                    window_start + end,
                    color="black",
                    lw=1,
                    label="workload rate" if not i else None,
                )
        load_ax.set(ylabel="req/s", title="Offered load (sends per second) and success ratio over time")
        ok_ax.set(xlabel="time since start (s)", ylabel="success ratio", ylim=(-0.05, 1.05))
        for ax in (load_ax, ok_ax):
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        priced = [(t.name, t.cost_per_1m_usd) for t in report.targets if t.cost_per_1m_usd is not None]
        if priced:
            bars, ax = plt.subplots(figsize=(9, 0.6 + 0.45 * len(priced)))
            ax.barh(
                [n for n, _ in priced],
                [c for _, c in priced],
                color=[f"C{names.index(n) % 10}" for n, _ in priced],
            )
            for i, (_, c) in enumerate(priced):
                ax.annotate(f" ${c:,.2f}", (c, i), va="center", fontsize="small")
            ax.set(xlabel="$ per 1M successful inferences", title="Cost")
            ax.invert_yaxis()
            ax.grid(True, axis="x", alpha=0.3)
        return _png(fig), None if bars is None else _png(bars)
    finally:
        plt.close(fig)
        if bars is not None:
            plt.close(bars)


def write_html(report: Report, path: Path) -> None:
    over_time, cdf, replicas = plots(report)
    load, cost = load_and_cost_plots(report)
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
<img alt="offered load and success ratio over time" src="data:image/png;base64,{load}">
{_replicas_section(replicas)}{_cost_section(cost)}
<h2>Latency CDF</h2><img alt="latency CDF" src="data:image/png;base64,{cdf}">
</body></html>
"""
    path.write_text(page)


def _cost_section(png: str | None) -> str:
    if png is None:
        return ""
    return f'<h2>Cost</h2><img alt="cost per 1M inferences" src="data:image/png;base64,{png}">\n'


def _replicas_section(png: str | None) -> str:
    if png is None:
        return ""
    return (
        "<h2>Replicas over time</h2><p>Pods matching each target's selector, watched through the Kubernetes "
        "API: total counts those not terminating, ready those whose Ready condition is True; dotted lines "
        'mark cold starts.</p><img alt="replicas over time" '
        f'src="data:image/png;base64,{png}">\n'
    )


def write_all(report: Report, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "csv": out_dir / "summary.csv",
        "samples": out_dir / "samples.csv",
        "html": out_dir / "report.html",
    }
    if any(t.replicas is not None for t in report.targets):
        paths["replicas"] = out_dir / "replicas.csv"
        write_replicas_csv(report, paths["replicas"])
    write_json(report, paths["json"])
    write_csv(report, paths["csv"], paths["samples"])
    write_html(report, paths["html"])
    return paths
