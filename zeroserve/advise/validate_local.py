"""`zeroserve advise --validate` on this machine: the predictions checked against a real `zeroserve bench`
run.

Each platform's pick runs as one process under the same CPU quota the profile used: the runtime
(`zeroserve serve`) at the Knative pick's vCPU, the Lambda handler behind the function URL emulator at
the Lambda pick's CPU share, the Cloud Function on functions-framework at the Cloud Run pick's vCPU. One
process is one replica that never scales, so the prediction to compare with is the same arrivals through
one always-warm FIFO server with the profiled service times; what it checks is the service-time model and
the queueing, not the platforms' scaling (that is validate_knative.py's, on a cluster).

The load is the advise workload cut to `duration` seconds; targets run one after another, so they do
not share the cores with each other (they still share them with the load generator)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from zeroserve.advise.profile import (
    Child,
    Profile,
    ProfileError,
    _env,
    _free_port,
    cpu_limit,
    time_http,
    wait_until_ready,
)
from zeroserve.advise.simulate import draw, simulate_pool
from zeroserve.advise.validate import ValidateError, shortened

P50_TOLERANCE = 0.20
P99_TOLERANCE = 0.30
# A p99 over fewer requests rests on a handful of them (over 100, on the slowest one): it is shown, not
# judged.
P99_MIN_REQUESTS = 500


@dataclass
class Comparison:
    target: str
    kind: str
    vcpu: float
    requests: int
    predicted_p50_ms: float
    measured_p50_ms: float | None
    predicted_p99_ms: float
    measured_p99_ms: float | None
    measured_success: float | None
    # The runtime's paced time just before the run against the profile's at this vCPU (now / then - 1), and
    # the p50 predicted from the profile as it was: a service time a millisecond long moves 2x with the
    # machine's state between runs, and that is the cached profile's age, not the simulation's error.
    drift: float | None = None
    profile_p50_ms: float | None = None

    def errors(self) -> tuple[float, float]:
        def rel(pred: float, meas: float | None) -> float:
            return math.inf if not meas else (pred - meas) / meas

        return rel(self.predicted_p50_ms, self.measured_p50_ms), rel(
            self.predicted_p99_ms, self.measured_p99_ms
        )

    @property
    def p99_judged(self) -> bool:
        return self.requests >= P99_MIN_REQUESTS

    @property
    def within(self) -> bool:
        e50, e99 = self.errors()
        return abs(e50) <= P50_TOLERANCE and (abs(e99) <= P99_TOLERANCE or not self.p99_judged)


@dataclass
class LocalPlan:
    name: str
    kind: str  # the bench target kind
    vcpu: float
    service: str  # runtime | handler
    parallel: int = 1  # the runtime's parallel inferences


def plan_targets(profile: Profile, picks: dict[str, tuple[float, int]], cores: int) -> list[LocalPlan]:
    out = []
    for name, kind, service in (
        ("zeroserve", "oip-rest", "runtime"),
        ("lambda", "lambda-url", "handler"),
        ("gcf", "gcf", "handler"),
    ):
        if name in picks:
            vcpu, parallel = picks[name]
            out.append(LocalPlan(name, kind, min(float(cores), vcpu), service, parallel))
    return out


def predict(
    profile: Profile,
    plan: LocalPlan,
    arrivals: np.ndarray,
    wall_s: float,
    timeout_s: float,
    seed: int,
    through_front: list[float] | None = None,
    client_s: float = 0.0,
    runtime_scale: float = 1.0,
) -> tuple[float, float]:
    """p50 and p99 of the same arrivals through one warm FIFO server with the profile's service times.
    A function's local HTTP front end (the Lambda URL emulator, functions-framework) is not the cloud's,
    so the profile does not hold it: `through_front` are paced requests through it, timed on the process
    before the run (the handler's profiled time plus the front end's, tail included). `client_s` is what
    the load generator's client adds to each request over the profile's. `runtime_scale` rescales the
    runtime's profiled samples (their tail's shape kept) to its paced time just before the run."""
    u = np.random.default_rng([seed, 3]).random(len(arrivals))
    if plan.service == "runtime" or not through_front:
        svc = draw(profile.runtime_service(plan.vcpu) * runtime_scale, u)
    else:
        svc = draw(np.asarray(through_front), u)
    ratio = profile.parallel_ratio(plan.vcpu, plan.parallel) if plan.parallel > 1 else None
    sim = simulate_pool(
        arrivals, svc, 0.0, client_s, timeout_s, wall_s, 1, 1, parallel=plan.parallel, parallel_ratio=ratio
    )
    return sim.percentiles_ms()


def time_paced(local: _Local, model: str, body: bytes, gap_s: float) -> list[float]:
    """Paced requests to a local target, as the profile times the runtime; through a function's local HTTP
    front end, they hold its handler's time and the front end's."""
    return time_http(local.port, model, body, 60, 10.0, lambda: None, gap_s)


# Beyond this, the runtime's paced time now and the profile's differ by more than the p50 goal allows: the
# report says the profile is stale for this machine as it is.
DRIFT_WARNING = 0.20


def runtime_drift(profile: Profile, plan: LocalPlan, paced: list[float]) -> float:
    """The runtime's paced time now over the profile's at this vCPU, less 1. Both are one request at a
    time at the profile's pace, so what moves them is the machine (its other processes, its clock and
    idle states), not the load: the simulation is then fed now's, as the handlers' are. With parallel
    inferences the runtime runs its share of the threads, so the ratio holds that split too."""
    then = float(np.median(profile.runtime_service(plan.vcpu)))
    return float(np.median(paced)) / then - 1 if then > 0 else 0.0


def client_overhead(target: Any, payload: dict[str, Any], paced: list[float], gap_s: float) -> float:
    """What the load generator's client (locust's, scheduled by gevent, in the process that also keeps
    the send times) adds to a request over the profile's plain kept-alive connection: a few seconds of
    `zeroserve bench` at a pace that leaves the target idle between requests, against `paced`, the same
    target timed the profile's way just before. At a millisecond a request it is a fifth of the latency,
    and it is part of what the run measures, though not of the target."""
    import io

    from rich.console import Console
    from zeroserve_loadgen.bench import BenchOptions, run_bench
    from zeroserve_loadgen.runner import LoadgenError
    from zeroserve_loadgen.workloads import Constant

    one = float(np.median(paced))
    rate = 1 / (gap_s + 2 * one)
    workload = Constant(rate=rate, duration_s=max(2.0, 60 / rate), seed=0, arrival="uniform")
    try:
        got = run_bench([target], payload, workload, BenchOptions(out_dir=None), Console(file=io.StringIO()))
    except LoadgenError as e:
        raise ValidateError(f"{target.name}: {e}") from None
    p50 = got.report.targets[0].latency_ms.get("p50")
    return max(0.0, (p50 or 0.0) / 1000 - one)


class _Local(Child):
    def __init__(self, plan: LocalPlan, wrap: Any, env: dict[str, str], log: Path) -> None:
        self.plan = plan
        self.port = _free_port()
        exe = sys.executable
        if plan.kind == "oip-rest":
            argv = [exe, "-m", "zeroserve.cli", "serve", "--http-port", str(self.port), "--grpc-port", "0"]
            argv += ["--host", "127.0.0.1"]
        elif plan.kind == "lambda-url":
            argv = [exe, "-m", "zeroserve_runtime.functions.url_emulator", "--port", str(self.port)]
            argv += ["--backend", "direct"]
        else:
            spec = importlib.util.find_spec("zeroserve_runtime.functions.gcf")
            if spec is None or spec.origin is None:
                raise ValidateError(
                    "the Cloud Function module zeroserve_runtime.functions.gcf is not installed"
                )
            argv = [exe, "-m", "functions_framework", "--target", "infer", "--source", spec.origin]
            argv += ["--port", str(self.port)]
            env = {**env, "HOST": "127.0.0.1"}
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(wrap(argv), env, log)

    def wait_ready(self, timeout_s: float = 120) -> None:
        wait_until_ready(self.proc, self.url, self.log, timeout_s, self.plan.name, ValidateError)


def picks_from(advice: Any, spec: Any) -> dict[str, tuple[float, int]]:
    """The vCPU and parallel inferences of each platform's pick: its cheapest that meets the objectives,
    else its best ranked."""
    out: dict[str, tuple[float, int]] = {}
    for platform, cands in advice.by_platform.items():
        c = advice.winners.get(platform) or (cands[0] if cands else None)
        if c is None:
            continue
        if platform == "knative":
            out["zeroserve"] = c.knobs["vcpu"], c.knobs.get("parallel_inferences", 1)
        elif platform == "lambda":
            out["lambda"] = spec.platforms.lambda_.vcpu(c.knobs["memory_mb"]), 1
        elif platform == "cloud_run":
            out["gcf"] = c.knobs["vcpu"], 1
    return out


def run_local(
    loaded: Any,
    profile: Profile,
    plans: list[LocalPlan],
    out: Path,
    console: Any,
    duration: float,
) -> list[Comparison]:
    from zeroserve_loadgen.bench import BenchOptions, run_bench
    from zeroserve_loadgen.runner import LoadgenError
    from zeroserve_loadgen.targets import Target

    spec = loaded.spec
    workload = shortened(loaded.workload, duration)
    arrivals = np.asarray(workload.arrivals(), dtype=float)
    if len(arrivals) == 0:
        raise ValidateError(
            f"the workload sends nothing in its first {duration:g} s; raise --validate-duration"
        )
    out.mkdir(parents=True, exist_ok=True)
    limited = spec.profile.cpu_limits == "cgroup"
    results: list[Comparison] = []
    cache = out / "cache"
    for i, plan in enumerate(plans):
        threads = max(1, profile.threads(plan.vcpu) // plan.parallel)
        env = _env(loaded.model_path, spec.model.name, loaded.model_sha256, threads, cache, plan.parallel)
        env["ZEROSERVE_LOG_LEVEL"] = "warning"
        console.print(
            f"validate: {plan.name} ({plan.kind}) at {plan.vcpu:g} vCPU, {threads} thread(s), "
            f"{len(arrivals)} requests over {workload.duration:g} s",
            highlight=False,
        )
        with cpu_limit(plan.vcpu, f"v{i}", limited) as wrap:
            local = _Local(plan, wrap, env, out / f"{plan.name}.log")
            try:
                local.wait_ready()
                gap_s = spec.profile.gap_ms / 1000
                paced = time_paced(local, spec.model.name, orjson.dumps(loaded.payload), gap_s)
                through: list[float] | None = None
                drift: float | None = None
                if plan.service == "runtime":
                    drift = runtime_drift(profile, plan, paced)
                    now_ms = float(np.median(paced)) * 1000
                    console.print(
                        f"  the runtime answers paced requests in {now_ms:.2f} ms now, "
                        f"{drift:+.0%} against the profile"
                        + (
                            ": the machine is not as it was when the profile was taken; the prediction "
                            "uses now's time (advise itself used the profile's: re-profile with "
                            "profile.cache_dir emptied to refresh it)"
                            if abs(drift) > DRIFT_WARNING
                            else ""
                        ),
                        highlight=False,
                    )
                elif plan.service == "handler":
                    through = paced
                    front = float(np.median(through) - np.median(profile.handler_service(plan.vcpu)))
                    console.print(f"  its local HTTP front end: {front * 1000:.2f} ms", highlight=False)
                target = Target(name=plan.name, kind=plan.kind, url=local.url, model=spec.model.name)  # type: ignore[arg-type]
                client_s = client_overhead(target, loaded.payload, paced, gap_s)
                console.print(
                    f"  the load generator's client adds {client_s * 1000:.2f} ms a request", highlight=False
                )
                try:
                    result = run_bench(
                        [target],
                        loaded.payload,
                        workload,
                        BenchOptions(out_dir=out / plan.name),
                        console,
                    )
                except LoadgenError as e:
                    raise ValidateError(f"{plan.name}: {e}") from None
            finally:
                local.stop()
        t = result.report.targets[0]
        args = (profile, plan, arrivals, workload.duration, spec.objectives.timeout_s, spec.seed, through)
        p50, p99 = predict(*args, client_s, 1.0 + (drift or 0.0))
        as_profiled = predict(*args, client_s)[0] if drift is not None else None
        results.append(
            Comparison(
                plan.name,
                plan.kind,
                plan.vcpu,
                t.requests,
                p50,
                t.latency_ms.get("p50"),
                p99,
                t.latency_ms.get("p99"),
                t.success_ratio,
                drift,
                as_profiled,
            )
        )
    (out / "validate.json").write_bytes(
        orjson.dumps(
            [{**asdict(c), "within": c.within, "p99_judged": c.p99_judged} for c in results],
            option=orjson.OPT_INDENT_2,
        )
    )
    return results


def print_comparisons(results: list[Comparison], console: Any) -> None:
    from rich.table import Table

    table = Table(title="predicted against measured (zeroserve bench)", title_justify="left")
    for h in (
        "target",
        "vCPU",
        "requests",
        "p50 pred",
        "p50 meas",
        "err",
        "p99 pred",
        "p99 meas",
        "err",
        "ok",
        "svc drift",
    ):
        table.add_column(h, justify="right" if h not in ("target", "ok") else "left")
    for c in results:
        e50, e99 = c.errors()
        table.add_row(
            c.target,
            f"{c.vcpu:g}",
            str(c.requests),
            f"{c.predicted_p50_ms:,.1f}",
            "-" if c.measured_p50_ms is None else f"{c.measured_p50_ms:,.1f}",
            f"{e50:+.0%}",
            f"{c.predicted_p99_ms:,.1f}",
            "-" if c.measured_p99_ms is None else f"{c.measured_p99_ms:,.1f}",
            f"{e99:+.0%}" + ("" if c.p99_judged else " (not judged)"),
            "yes" if c.within else "no",
            "-" if c.drift is None else f"{c.drift:+.0%}",
        )
    console.print(table)
    stale = [c for c in results if c.drift is not None and abs(c.drift) > DRIFT_WARNING]
    for c in stale:
        console.print(
            f"  {c.target}: the runtime's service time moved {c.drift:+.0%} since the profile; from the "
            f"profile as it was, p50 would be predicted {c.profile_p50_ms:,.2f} ms",
            highlight=False,
        )
    if any(not c.p99_judged for c in results):
        console.print(
            f"  p99 is judged over {P99_MIN_REQUESTS} requests or more; raise --validate-duration for it",
            highlight=False,
        )
    for c in results:
        if c.within:
            continue
        e50, e99 = c.errors()
        why = []
        if abs(e50) > P50_TOLERANCE:
            why.append(
                f"p50 {e50:+.0%}: the service-time model (sequential requests in the profile) "
                + (
                    "is slower than the run; the profile ran on a busier machine"
                    if e50 > 0
                    else "misses time the run added: the load generator shares the cores with the target"
                )
            )
        if abs(e99) > P99_TOLERANCE and c.p99_judged:
            why.append(
                f"p99 {e99:+.0%}: the tail "
                + (
                    "of the profile's samples is heavier than the run's"
                    if e99 > 0
                    else "of the run has stalls the profile did not see (CPU quota throttling under load, "
                    "the load generator and other processes on the cores)"
                )
            )
        console.print(f"  {c.target}: " + "; ".join(why), highlight=False)


def validate_local(
    loaded: Any, profile: Profile, out: Path, console: Any, duration: float, advice: Any
) -> bool:
    cores = len(os.sched_getaffinity(0))
    plans = plan_targets(profile, picks_from(advice, loaded.spec), cores)
    if not plans:
        raise ValidateError("no local target to validate: enable knative, lambda or cloud_run")
    try:
        results = run_local(loaded, profile, plans, out, console, duration)
    except ProfileError as e:
        raise ValidateError(str(e)) from None
    print_comparisons(results, console)
    return all(c.within for c in results)
