"""`zeroserve advise advise.yaml`: profile, simulate, price, recommend; `--validate` checks the top
configurations with a real `zeroserve bench` run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "advise",
        help="the cheapest serving configuration that meets a latency target, across Knative, Lambda, "
        "Cloud Run and always-on servers",
        description="Profiles the model in the real runtime under CPU limits, simulates the workload "
        "through each platform's scaling, prices every configuration and recommends one.",
    )
    p.add_argument("advise_file", type=Path, help="YAML with model, payload, workload, objectives, platforms")
    p.add_argument("--out", type=Path, default=Path("zeroserve-advise"), help="report directory")
    p.add_argument("--top", type=int, default=8, help="configurations shown per platform (default 8)")
    p.add_argument("--duration", type=float, help="override the workload's duration_s")
    p.add_argument(
        "--validate",
        action="store_true",
        help="run the top local configurations for real with zeroserve bench and print predicted "
        "against measured",
    )
    p.add_argument(
        "--validate-duration", type=float, default=60.0, help="seconds of load per validation (default 60)"
    )
    p.set_defaults(func=_advise)


def _advise(args: Any) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 150
    return run(
        args.advise_file, args.out, console, args.top, args.duration, args.validate, args.validate_duration
    )


def run(
    path: Path,
    out: Path,
    console: Any,
    top: int = 8,
    duration: float | None = None,
    validate: bool = False,
    validate_duration: float = 60.0,
) -> int:
    from rich.markup import escape

    from zeroserve.advise import config
    from zeroserve.advise.profile import ProfileError

    try:
        loaded = config.load(path)
        if duration is not None:
            loaded = _with_duration(loaded, duration)
        profile, advice, paths = advise_loaded(loaded, out, console, top)
    except (config.AdviseFileError, ProfileError) as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    for kind, p in paths.items():
        console.print(f"  {kind}: {p}", highlight=False, markup=False)
    if validate:
        from zeroserve.advise.validate import ValidateError, validate_local

        try:
            ok = validate_local(loaded, profile, out / "validate", console, validate_duration, advice)
        except ValidateError as e:
            console.print(f"[red]validate failed:[/] {escape(str(e))}", highlight=False)
            return 1
        return 0 if ok else 1
    return 0 if advice.winner is not None else 1


def _with_duration(loaded: Any, duration: float) -> Any:
    from zeroserve.advise.config import AdviseFileError

    w = loaded.workload
    if not hasattr(w, "duration_s"):
        raise AdviseFileError(f"--duration: a {w.type} workload has no single duration to override")
    w = type(w).model_validate({**w.model_dump(), "duration_s": duration})
    return loaded.model_copy(update={"workload": w})


def advise_loaded(
    loaded: Any, out: Path | None, console: Any, top: int = 8
) -> tuple[Any, Any, dict[str, Path]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from zeroserve.advise import config, report
    from zeroserve.advise.profile import run_profile
    from zeroserve.advise.recommend import advise
    from zeroserve.advise.sweep import sweep

    spec = loaded.spec
    vcpus = config.profile_vcpus(spec, len(os.sched_getaffinity(0)))
    profile = run_profile(
        loaded.model_path,
        spec.model.name,
        loaded.model_sha256,
        loaded.payload,
        vcpus,
        spec.profile,
        console,
        handler=bool({"lambda", "cloud_run"} & set(spec.platforms.enabled())),
    )
    console.print(
        f"profile: {len(profile.points)} points at {', '.join(f'{v:g}' for v in vcpus)} vCPU "
        f"({'cached from a run of' if profile.cached else 'measured in'} {profile.seconds:.1f} s)",
        highlight=False,
    )
    arrivals = loaded.arrivals()
    started = time.monotonic()
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} configurations"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("sim", total=1)
        cands = sweep(
            spec,
            profile,
            arrivals,
            loaded.workload.duration,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"simulated {len(cands)} configurations over {len(arrivals):,} requests "
        f"({loaded.workload.duration:,.0f} s of load) in {time.monotonic() - started:.1f} s",
        highlight=False,
    )
    advice = advise(spec, cands, loaded.model_sha256, spec.model.name, profile.threads)
    report.print_advice(advice, console, top)
    meta = {"name": spec.model.name, "path": str(loaded.model_path), "sha256": loaded.model_sha256}
    paths = report.write_all(out, spec, advice, profile, meta, top) if out else {}
    return profile, advice, paths
