"""`zeroserve bench`: one workload against every target in a bench file, then the comparison report.

A target that cannot be reached is left out with a clear message; the report is still written for the
others, and the exit status says something was wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from zeroserve_loadgen import render
from zeroserve_loadgen.clients import check_targets
from zeroserve_loadgen.plan import Mode, RunPlan, schedule
from zeroserve_loadgen.progress import RunProgress
from zeroserve_loadgen.runner import LoadgenError, preflight, run_local, run_master
from zeroserve_loadgen.summary import Report, TargetReport, build_report
from zeroserve_loadgen.targets import Target
from zeroserve_loadgen.workloads import Workload


@dataclass
class BenchOptions:
    mode: Mode = "interleaved"
    gap_s: float = 0.0
    workers: int = 0  # 0: everything in this process; N: a locust master with N workers
    spawn_workers: bool = True  # start the N workers here; False: wait for them to join
    master_host: str = "127.0.0.1"
    master_port: int = 5557
    max_in_flight: int = 1000
    out_dir: Path | None = Path("zeroserve-bench")


@dataclass
class BenchResult:
    report: Report
    paths: dict[str, Path]
    unreachable: dict[str, str]
    errors: list[str]

    @property
    def ok(self) -> bool:
        complete = all(t.requests == t.planned for t in self.report.targets if not t.unreachable)
        return (
            not self.unreachable
            and not self.errors
            and complete
            and all(t.successes for t in self.report.targets)
        )


def run_bench(
    targets: list[Target],
    payload: dict[str, Any],
    workload: Workload,
    options: BenchOptions,
    console: Console,
) -> BenchResult:
    check_targets(targets, payload)
    unreachable = preflight(targets)
    for name, why in unreachable.items():
        console.print(f"[red]error:[/] target {name}: {escape(why)}; it is left out of the run")
    reachable = [t for t in targets if t.name not in unreachable]
    if not reachable:
        raise LoadgenError(
            "no target is reachable: " + "; ".join(f"{n}: {w}" for n, w in unreachable.items())
        )
    plan = RunPlan(
        targets=reachable,
        payload=payload,
        workload=workload,
        mode=options.mode,
        gap_s=options.gap_s,
        max_in_flight=options.max_in_flight,
    )
    sched = schedule(plan)
    planned = len(sched.times)
    console.print(
        f"bench: {len(reachable)} target(s), {planned} requests over {plan.total_duration():.0f} s, "
        f"{options.mode}, {'in this process' if not options.workers else f'{options.workers} workers'}"
    )
    with RunProgress(plan, planned, console) as progress:
        if options.workers:
            outcome = run_master(
                plan,
                options.workers,
                bind_host=options.master_host,
                bind_port=options.master_port,
                spawn_local=options.spawn_workers,
                progress=progress,
            )
        else:
            outcome = run_local(plan, progress=progress)
    for error in outcome.errors:
        console.print(f"[red]error:[/] {escape(error)}", highlight=False)
    per_target = [int((sched.targets == k).sum()) for k in range(len(reachable))]
    report = build_report(plan, outcome.samples, per_target, outcome.workers, outcome.errors)
    # Left-out targets still get a row, saying why.
    for t in targets:
        if t.name in unreachable:
            report.targets.append(TargetReport(t.name, t.kind, t.url, unreachable=unreachable[t.name]))
    paths = render.write_all(report, options.out_dir) if options.out_dir else {}
    return BenchResult(report, paths, unreachable, outcome.errors)
