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
from zeroserve_loadgen.replicas import Recorded, Recorder, ReplicaError, check_client
from zeroserve_loadgen.runner import LoadgenError, RunOutcome, preflight, run_local, run_master
from zeroserve_loadgen.summary import Report, TargetReport, build_report
from zeroserve_loadgen.targets import ReplicaSource, Target
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
    recorders, replicas = _start_replicas(reachable)
    failed = {name: f"replica count: {r.errors[0]}" for name, r in replicas.items()}
    for name, why in failed.items():
        console.print(f"[red]error:[/] target {name}: {escape(why)}", highlight=False)
    try:
        console.print(
            f"bench: {len(reachable)} target(s), {planned} requests over {plan.total_duration():.0f} s, "
            f"{options.mode}, {'in this process' if not options.workers else f'{options.workers} workers'}"
        )
        with RunProgress(plan, planned, console) as progress:
            outcome = _run(plan, options, progress)
    finally:
        for r in recorders.values():
            r.request_stop()
        replicas.update({name: r.stop() for name, r in recorders.items()})
    for error in outcome.errors:
        console.print(f"[red]error:[/] {escape(error)}", highlight=False)
    per_target = [int((sched.targets == k).sum()) for k in range(len(reachable))]
    report = build_report(
        plan,
        outcome.samples,
        per_target,
        outcome.workers,
        outcome.errors,
        replicas=replicas,
        start_epoch_s=outcome.start_at,
    )
    # Left-out targets still get a row, saying why.
    for t in targets:
        if t.name in unreachable:
            report.targets.append(TargetReport(t.name, t.kind, t.url, unreachable=unreachable[t.name]))
    paths = render.write_all(report, options.out_dir) if options.out_dir else {}
    errors = outcome.errors + [f"{name}: {why}" for name, why in failed.items()]
    return BenchResult(report, paths, unreachable, errors)


def _run(plan: RunPlan, options: BenchOptions, progress: RunProgress) -> RunOutcome:
    if options.workers:
        return run_master(
            plan,
            options.workers,
            bind_host=options.master_host,
            bind_port=options.master_port,
            spawn_local=options.spawn_workers,
            progress=progress,
        )
    return run_local(plan, progress=progress)


def _start_replicas(targets: list[Target]) -> tuple[dict[str, Recorder], dict[str, Recorded]]:
    """A recorder per distinct `replicas:` block (targets that share one share its watch), each holding its
    first count before the run starts. One that cannot start is given back as what was recorded instead:
    its error; the run goes on without it."""
    wanted = {t.name: t.replicas for t in targets if t.replicas is not None}
    if not wanted:
        return {}, {}
    try:
        check_client()
    except ReplicaError as e:
        raise LoadgenError(f"{next(iter(wanted))}.replicas: {e}") from None
    by_source = {source: Recorder(source) for source in dict.fromkeys(wanted.values())}
    failed: dict[ReplicaSource, Recorded] = {}
    try:
        for r in by_source.values():
            r.start()
        for source, r in by_source.items():
            try:
                r.wait_started()
            except ReplicaError as e:
                failed[source] = Recorded(errors=[str(e)])
    except BaseException:
        for r in by_source.values():
            r.stop()
        raise
    recorders = {name: by_source[s] for name, s in wanted.items() if s not in failed}
    return recorders, {name: failed[s] for name, s in wanted.items() if s in failed}
