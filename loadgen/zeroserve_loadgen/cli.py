"""`zeroserve bench` and `zeroserve bench-worker`. Registering them imports nothing heavy: locust patches
the process with gevent on import, which only a bench run may do."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run one workload against several endpoints and compare latency, success, cold starts, cost",
        description="Open-loop load (constant, step, MMPP, sporadic) against every target of a bench file; "
        "writes report.json, summary.csv, samples.csv and report.html.",
    )
    p.add_argument("bench_file", type=Path, help="YAML with targets, payload and workload")
    p.add_argument(
        "--mode",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="targets side by side in one window, or one after another (default: interleaved)",
    )
    p.add_argument("--gap", type=float, default=0.0, help="seconds between targets in sequential mode")
    p.add_argument("--duration", type=float, help="override the workload's duration_s")
    p.add_argument("--seed", type=int, help="override the workload's seed")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run a locust master with N worker processes (default: one process)",
    )
    p.add_argument(
        "--remote-workers",
        action="store_true",
        help="do not start the workers here; wait for `zeroserve bench-worker` to join",
    )
    p.add_argument("--master-bind", default="127.0.0.1", help="master address (0.0.0.0 for remote workers)")
    p.add_argument("--master-port", type=int, default=5557)
    p.add_argument("--max-in-flight", type=int, default=1000, help="outstanding requests per worker")
    p.add_argument("--out", type=Path, default=Path("zeroserve-bench"), help="report directory")
    p.set_defaults(func=_bench)

    w = subparsers.add_parser(
        "bench-worker", help="join a `zeroserve bench --workers N --remote-workers` run"
    )
    w.add_argument("--master-host", required=True)
    w.add_argument("--master-port", type=int, default=5557)
    w.set_defaults(func=_bench_worker)


def _workload_with_overrides(workload: Any, duration: float | None, seed: int | None) -> Any:
    from zeroserve_loadgen.targets import BenchFileError

    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = seed
    if duration is not None:
        if not hasattr(workload, "duration_s"):
            raise BenchFileError(f"--duration: a {workload.type} workload has no single duration to override")
        update["duration_s"] = duration
    return type(workload).model_validate({**workload.model_dump(), **update}) if update else workload


def _bench(args: Any) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.markup import escape

    from zeroserve_loadgen import render
    from zeroserve_loadgen.bench import BenchOptions, run_bench
    from zeroserve_loadgen.runner import LoadgenError
    from zeroserve_loadgen.targets import BenchFileError, load_bench_file

    console = Console()
    if not console.is_terminal:
        console.width = 150  # logs and CI: keep the table's columns readable
    try:
        bench, payload = load_bench_file(args.bench_file)
        workload = _workload_with_overrides(bench.workload, args.duration, args.seed)
        options = BenchOptions(
            mode=args.mode,
            gap_s=args.gap,
            workers=args.workers,
            spawn_workers=not args.remote_workers,
            master_host=args.master_bind,
            master_port=args.master_port,
            max_in_flight=args.max_in_flight,
            out_dir=args.out,
        )
        result = run_bench(bench.targets, payload, workload, options, console)
    except (BenchFileError, LoadgenError) as e:
        # Messages quote YAML paths and extras (targets[2], 'zeroserve[aws]'), never rich markup.
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except ValidationError as e:  # a command-line override the workload or the plan refuses
        for err in e.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"][-1:])
            console.print(f"[red]error:[/] {escape(where)}: {escape(err['msg'])}", highlight=False)
        return 2
    render.print_table(result.report, console)
    for kind, path in result.paths.items():
        console.print(f"  {kind}: {path}", highlight=False, markup=False)
    return 0 if result.ok else 1


def _bench_worker(args: Any) -> int:
    from zeroserve_loadgen.runner import run_worker

    return run_worker(args.master_host, args.master_port)
