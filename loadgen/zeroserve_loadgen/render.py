"""The comparison as a terminal table, JSON, CSV and a self-contained HTML page with latency-over-time
and latency CDF plots (matplotlib PNGs, embedded)."""

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
    cold = report.cold_start_flags
    with samples.open("w", newline="") as f:
        w = csv.writer(f)
        # `cold` is the target's own header; `cold_start` is what the report counts (header or gap).
        w.writerow(["target", *Sample._fields[1:], "cold_start"])
        for s, c in zip(report.samples, cold.tolist(), strict=True):
            w.writerow([names[s.target], *s[1:], c])


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
    cold = report.cold_start_flags
    over_time, ax1 = plt.subplots(figsize=(9, 3.6))
    cdf, ax2 = plt.subplots(figsize=(9, 3.6))
    try:
        for k, name in enumerate(names):
            mine = [
                (s, c) for s, c in zip(report.samples, cold.tolist(), strict=True) if s.target == k and s.ok
            ]
            if not mine:
                continue
            t = np.array([s.sent_s for s, _ in mine])
            ms = np.array([s.latency_s for s, _ in mine]) * 1000
            line = ax1.plot(t, ms, ".", markersize=3, alpha=0.6, label=name)[0]
            colds = [s for s, c in mine if c]
            if colds:
                ax1.plot(
                    [s.sent_s for s in colds],
                    [s.latency_s * 1000 for s in colds],
                    "x",
                    color=line.get_color(),
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
