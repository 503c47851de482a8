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
    k = p.add_argument_group(
        "validating on a cluster",
        "with --validate and --knative-url, also bench the ModelService deployed from modelservice.yaml "
        "and compare its cold starts and replica-seconds with the simulation",
    )
    k.add_argument("--knative-url", help="the ModelService's URL (status.url, or the ingress address)")
    k.add_argument("--knative-host", help="Host header for the route, when the URL is the ingress address")
    k.add_argument("--knative-namespace", default="default")
    k.add_argument(
        "--knative-selector", help="its pods' label selector, e.g. serving.knative.dev/service=NAME"
    )
    k.add_argument("--kubeconfig", type=Path)
    p.set_defaults(func=_advise)


def _advise(args: Any) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 150
    knative = None
    if args.knative_url:
        if not args.knative_selector:
            console.print("[red]error:[/] --knative-url needs --knative-selector to count the replicas")
            return 2
        knative = {
            "url": args.knative_url,
            "host": args.knative_host,
            "namespace": args.knative_namespace,
            "selector": args.knative_selector,
            "kubeconfig": args.kubeconfig,
        }
    return run(
        args.advise_file,
        args.out,
        console,
        args.top,
        args.duration,
        args.validate,
        args.validate_duration,
        knative,
    )


def run(
    path: Path,
    out: Path,
    console: Any,
    top: int = 8,
    duration: float | None = None,
    validate: bool = False,
    validate_duration: float = 60.0,
    knative: dict[str, Any] | None = None,
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
        from zeroserve.advise.validate import ValidateError
        from zeroserve.advise.validate_local import validate_local

        try:
            ok = validate_local(loaded, profile, out / "validate", console, validate_duration, advice)
            if knative is not None:
                from zeroserve.advise.validate_knative import validate_knative

                compared = validate_knative(
                    loaded,
                    profile,
                    advice,
                    out=out / "validate",
                    console=console,
                    duration=validate_duration,
                    **knative,
                )
                ok = ok and not compared.misses()
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
        parallel=spec.platforms.knative.parallel_inferences if spec.platforms.knative.enabled else (),
    )
    console.print(
        f"profile: {len(profile.points)} points at {', '.join(f'{v:g}' for v in vcpus)} vCPU "
        f"({'cached from a run of' if profile.cached else 'measured in'} {profile.seconds:.1f} s)",
        highlight=False,
    )
    if warning := profile.busy_warning():
        console.print(f"profile: [yellow]warning[/]: {warning}", highlight=False)
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
