"""The advice as a terminal summary, advice.json, candidates.csv and a self-contained report.html with
the Pareto chart of cost against p99 (matplotlib, embedded)."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Any

import orjson

from zeroserve.advise import pricing
from zeroserve.advise.config import AdviseFile
from zeroserve.advise.profile import Profile
from zeroserve.advise.recommend import Advice
from zeroserve.advise.sweep import PLATFORM_NAMES, Candidate

COLORS = {"knative": "#1f77b4", "lambda": "#ff7f0e", "cloud_run": "#2ca02c", "always_on": "#7f7f7f"}


def _money(v: float) -> str:
    return "-" if not math.isfinite(v) else f"${v:,.2f}" if v >= 0.01 else f"${v:,.4f}"


def _ms(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:,.1f}"


def rows(cands: list[Candidate]) -> list[list[str]]:
    return [
        [
            c.label(),
            _ms(c.p50_ms),
            _ms(c.p99_ms),
            f"{c.success_ratio:.2%}",
            f"{c.cold_share:.2%}",
            str(c.max_replicas),
            _money(c.cost_per_1m_usd),
            _money(c.monthly_usd),
            "yes" if c.meets else "no: " + ", ".join(c.misses),
        ]
        for c in cands
    ]


HEADERS = [
    "configuration",
    "p50 ms",
    "p99 ms",
    "success",
    "cold",
    "max inst.",
    "$/1M inf",
    "$/month",
    "meets",
]


def print_advice(advice: Advice, console: Any, top: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    for platform, cands in advice.by_platform.items():
        table = Table(title=f"{PLATFORM_NAMES[platform]}: {len(cands)} configurations", title_justify="left")
        for i, h in enumerate(HEADERS):
            table.add_column(h, justify="left" if i in (0, 8) else "right")
        for row in rows(cands[:top]):
            table.add_row(*map(escape, row))
        console.print(table)
    o = advice.objectives
    ask = f"p99 <= {o.p99_ms:g} ms, success >= {o.min_success_ratio:.2%}"
    if o.max_cold_start_share is not None:
        ask += f", cold starts <= {o.max_cold_start_share:.2%}"
    if advice.winner is not None:
        w = advice.winner
        console.print(
            f"[bold green]cheapest that meets {escape(ask)}:[/] {PLATFORM_NAMES[w.platform]} "
            f"({escape(w.label())}): p99 {w.p99_ms:,.1f} ms, {_money(w.cost_per_1m_usd)} per 1M inferences, "
            f"{_money(w.monthly_usd)} a month at this load",
            highlight=False,
        )
        if w.priced_as:
            console.print(f"  priced as {escape(w.priced_as)}", highlight=False)
        for platform, c in advice.winners.items():
            if c is not None and c is not w:
                console.print(
                    f"  {PLATFORM_NAMES[platform]}: {escape(c.label())} at "
                    f"{_money(c.cost_per_1m_usd)} per 1M",
                    highlight=False,
                )
    else:
        console.print(f"[bold red]no configuration meets {escape(ask)}[/]", highlight=False)
        for line in advice.unmet:
            console.print(f"  {escape(line)}", highlight=False)
    for line in advice.tradeoffs:
        console.print(f"- {escape(line)}", highlight=False)


def to_dict(
    spec: AdviseFile, advice: Advice, profile: Profile, loaded_meta: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": loaded_meta,
        "objectives": spec.objectives.model_dump(),
        "assumptions": {
            name: plat.assumptions.model_dump()
            for name, plat in spec.platforms.enabled().items()
            if hasattr(plat, "assumptions")
        },
        "assumption_sources": {
            name: {k: f.description for k, f in type(plat.assumptions).model_fields.items()}
            for name, plat in spec.platforms.enabled().items()
        },
        "prices": pricing.sources(),
        "profile": {
            "seconds": profile.seconds,
            "busy_warning": profile.busy_warning(),
            "points": [
                {
                    "vcpu": p.vcpu,
                    "threads": p.threads,
                    "runtime_ms_p50": {b: _median_ms(v) for b, v in p.runtime_s.items()},
                    "handler_ms_p50": {b: _median_ms(v) for b, v in p.handler_s.items()},
                    "runtime_cold_s": p.runtime_cold,
                    "handler_init_s": p.handler_init_s,
                    "handler_cold_s": p.handler_cold,
                    # n parallel inferences: ms per request with n at once, and with one, back to back.
                    "parallel_ms_p50": {n: _median_ms(v) for n, v in p.parallel_s.items()},
                    "parallel_alone_ms_p50": {n: _median_ms(v) for n, v in p.parallel_alone_s.items()},
                    "others_cpus": p.others_cpus,
                }
                for p in profile.points
            ],
        },
        "winner": advice.winner.to_dict() if advice.winner else None,
        "winners": {k: (c.to_dict() if c else None) for k, c in advice.winners.items()},
        "unmet": advice.unmet,
        "tradeoffs": advice.tradeoffs,
        "settings": advice.settings,
        "candidates": [c.to_dict() for cands in advice.by_platform.values() for c in cands],
    }


def _median_ms(v: list[float]) -> float | None:
    import numpy as np

    return float(np.median(v)) * 1000 if v else None


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Configurations no other beats on both cost and p99."""
    good = sorted(
        (c for c in cands if math.isfinite(c.cost_per_1m_usd) and math.isfinite(c.p99_ms)),
        key=lambda c: (c.cost_per_1m_usd, c.p99_ms),
    )
    out: list[Candidate] = []
    for c in good:
        if not out or c.p99_ms < out[-1].p99_ms:
            out.append(c)
    return out


def pareto_png(advice: Advice) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from zeroserve_loadgen.render import _png

    cands = [c for v in advice.by_platform.values() for c in v]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for platform, v in advice.by_platform.items():
        pts = [c for c in v if math.isfinite(c.cost_per_1m_usd) and math.isfinite(c.p99_ms)]
        ax.scatter(
            [c.cost_per_1m_usd for c in pts],
            [c.p99_ms for c in pts],
            s=[28 if c.meets else 14 for c in pts],
            c=COLORS[platform],
            alpha=0.8,
            label=PLATFORM_NAMES[platform],
            marker="o",
        )
    front = pareto(cands)
    if front:
        ax.step(
            [c.cost_per_1m_usd for c in front],
            [c.p99_ms for c in front],
            where="post",
            color="black",
            lw=1,
            label="Pareto front",
        )
    ax.axhline(advice.objectives.p99_ms, color="red", ls="--", lw=1, label="p99 objective")
    if advice.winner is not None:
        w = advice.winner
        ax.scatter([w.cost_per_1m_usd], [w.p99_ms], marker="*", s=300, c="gold", edgecolors="black", zorder=5)
        ax.annotate("winner", (w.cost_per_1m_usd, w.p99_ms), textcoords="offset points", xytext=(8, 8))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("$ per 1M inferences (log)")
    ax.set_ylabel("predicted p99 latency, ms (log)")
    ax.set_title("Every configuration: cost against p99 (large dots meet every objective)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def write_all(
    out: Path, spec: AdviseFile, advice: Advice, profile: Profile, meta: dict[str, Any], top: int
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = to_dict(spec, advice, profile, meta)
    paths = {"json": out / "advice.json", "csv": out / "candidates.csv", "html": out / "advice.html"}
    paths["json"].write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["platform", *HEADERS])
        for platform, cands in advice.by_platform.items():
            for row in rows(cands):
                w.writerow([platform, *row])
    if "knative" in advice.settings:
        paths["modelservice"] = out / "modelservice.yaml"
        paths["modelservice"].write_text(advice.settings["knative"])
    paths["html"].write_text(_html(spec, advice, data, top))
    return paths


def _table_html(cands: list[Candidate]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows(cands)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(spec: AdviseFile, advice: Advice, data: dict[str, Any], top: int) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><meta charset=utf-8><title>zeroserve advise</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{"
        "text-align:left}pre{background:#f4f4f4;padding:8px}</style>",
        f"<h1>zeroserve advise: {esc(data['model']['name'])}</h1>",
        f"<p>Objectives: {esc(str(data['objectives']))}</p>",
    ]
    if advice.winner is not None:
        w = advice.winner
        parts.append(
            f"<h2>Winner: {esc(PLATFORM_NAMES[w.platform])} ({esc(w.label())})</h2>"
            f"<p>p50 {w.p50_ms:,.1f} ms, p99 {w.p99_ms:,.1f} ms, {_money(w.cost_per_1m_usd)} per 1M, "
            f"{_money(w.monthly_usd)} a month.</p>"
        )
    else:
        parts.append("<h2>No configuration meets the objectives</h2><ul>")
        parts += [f"<li>{esc(line)}</li>" for line in advice.unmet]
        parts.append("</ul>")
    parts.append(f'<img alt="Pareto chart" src="data:image/png;base64,{pareto_png(advice)}">')
    parts.append(
        "<h2>Trade-offs</h2><ul>" + "".join(f"<li>{esc(t)}</li>" for t in advice.tradeoffs) + "</ul>"
    )
    for name, text in advice.settings.items():
        parts.append(f"<h3>{esc(PLATFORM_NAMES[name])} settings</h3><pre>{esc(text)}</pre>")
    for platform, cands in advice.by_platform.items():
        priced = "".join(f"<li>{esc(b)}</li>" for b in dict.fromkeys(c.priced_as for c in cands) if b)
        priced = f"<p>Priced as:</p><ul>{priced}</ul>" if priced else ""
        parts.append(f"<h2>{esc(PLATFORM_NAMES[platform])}</h2>{priced}{_table_html(cands[:top])}")
    parts.append("<h2>Assumptions (not measured) and their sources</h2><ul>")
    for name, fields in data["assumption_sources"].items():
        values = data["assumptions"].get(name, {})
        for key, source in fields.items():
            parts.append(
                f"<li><b>{esc(name)}.{esc(key)} = {esc(str(values.get(key)))}</b>: {esc(source or '')}</li>"
            )
    parts.append("</ul><h2>Prices</h2><ul>")
    parts += [f"<li>{esc(k)}: {esc(v)}</li>" for k, v in data["prices"].items()]
    parts.append("</ul>")
    return "\n".join(parts)
