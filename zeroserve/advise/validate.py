"""`zeroserve advise --validate`: the predictions checked against a real `zeroserve bench` run.

Locally, each platform's pick runs as one process under the same CPU quota the profile used: the
runtime (`zeroserve serve`) at the Knative pick's vCPU, the Lambda handler behind the function URL
emulator at the Lambda pick's CPU share, the Cloud Function on functions-framework at the Cloud Run
pick's vCPU. One process is one replica that never scales, so the prediction to compare with is the
same arrivals through one always-warm FIFO server with the profiled service times; what it checks is
the service-time model and the queueing, not the platforms' scaling (that needs the real platform: on
a cluster, bench a ModelService with `replicas:` and compare cold starts and replica-seconds).

The load is the advise workload cut to `duration` seconds; targets run one after another, so they do
not share the cores with each other (they still share them with the load generator)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
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

P50_TOLERANCE = 0.20
P99_TOLERANCE = 0.30
# A p99 over fewer requests rests on a handful of them (over 100, on the slowest one): it is shown, not
# judged.
P99_MIN_REQUESTS = 500


class ValidateError(RuntimeError):
    pass


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


def shortened(workload: Any, duration: float) -> Any:
    """The same workload (and seed) cut to `duration` seconds."""
    if hasattr(workload, "duration_s"):
        return type(workload).model_validate({**workload.model_dump(), "duration_s": duration})
    return workload


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


# -- on a cluster: a real Knative ModelService ------------------------------------------------------------

COLD_TOLERANCE = 0.10
REPLICA_SECONDS_TOLERANCE = 0.20
BURST_JOIN_S = 3.0  # cold starts this close together (measured or in any simulated run) are one burst's


@dataclass
class ColdBurst:
    """A burst on which the measured run and the simulation disagree about cold starts."""

    at_s: float  # the burst's first cold start, in the run's seconds
    quiet_s: float  # how long no request had come before it
    measured: int
    predicted: float  # the mean over the simulated tick phases
    split: bool  # the tick phases disagree among themselves too


def cold_bursts(
    measured_at: list[float], predicted_at: list[list[float]], arrivals: np.ndarray
) -> list[ColdBurst]:
    """The bursts where the measured cold starts and the simulated runs' mean differ by half a start or
    more, each with the quiet spell before it: whether the misses sit at the scale-to-zero edge (quiet
    spells just over the time to reach zero, which the autoscaler's tick phase decides) or not."""
    events = sorted([*measured_at, *(t for run in predicted_at for t in run)])
    groups: list[tuple[float, float]] = []
    for t in events:
        if groups and t - groups[-1][1] <= BURST_JOIN_S:
            groups[-1] = (groups[-1][0], t)
        else:
            groups.append((t, t))
    out = []
    for lo, hi in groups:
        m = sum(lo <= t <= hi for t in measured_at)
        per_run = [sum(lo <= t <= hi for t in run) for run in predicted_at] or [0]
        mean = sum(per_run) / len(per_run)
        if abs(mean - m) < 0.5:
            continue
        before = arrivals[arrivals < lo - 1e-9]
        quiet = float(lo - before[-1]) if before.size else math.inf
        out.append(ColdBurst(lo, quiet, m, mean, min(per_run) != max(per_run)))
    return out


def _burst_summary(bursts: list[ColdBurst]) -> str:
    """Which assumption the differing bursts point at."""
    if not bursts:
        return ""
    split = [b for b in bursts if b.split]
    finite = [b.quiet_s for b in bursts if math.isfinite(b.quiet_s)]
    lo, hi = (f"{min(finite):.0f}", f"{max(finite):.0f}") if finite else ("", "")
    spells = f"after quiet spells of {lo if lo == hi else f'{lo}-{hi}'} s" if finite else "at the start"
    fewer = sum(b.measured < b.predicted for b in bursts)
    n = len(bursts)
    text = f"they differ at {n} burst{'s' if n > 1 else ''}, {spells}, {fewer} with fewer measured"
    if len(split) * 2 >= len(bursts):
        return (
            f"{text}; the simulated tick phases split on {len(split)} of them too: the scale-to-zero edge, "
            "where the autoscaler's tick phase decides and one run draws it once (a longer run narrows it)"
        )
    if fewer * 2 > len(bursts):
        return (
            f"{text}: the cluster kept replicas through quiet spells the simulation takes to zero "
            "(stable_window_s, tick_s, or a replica Ready late: the autoscaler counts it active from then)"
        )
    return f"{text}: the cluster went to zero sooner than simulated, or starts failed"


@dataclass
class KnativeComparison:
    knobs: dict[str, Any]
    predicted_cold: float  # the mean over the autoscaler tick phases
    measured_cold: int
    predicted_replica_seconds: float
    measured_replica_seconds: float | None
    predicted_p50_ms: float
    measured_p50_ms: float | None
    predicted_p99_ms: float
    measured_p99_ms: float | None
    # The cold answers' medians (the simulation's: pod_start_s, the profiled runtime cold start, and any wait
    # for a node's room), the replica peaks, and the room the simulation gave the replicas (None: no
    # limit): what names the assumption behind a miss.
    predicted_cold_p50_ms: float | None = None
    measured_cold_p50_ms: float | None = None
    predicted_max_replicas: int = 0
    measured_max_replicas: int | None = None
    capacity: int | None = None
    pod_start_s: float = 0.0  # what the simulation used
    pod_start_measured: bool = False  # on the cluster (measure_pod_start), not the assumption's default
    cold_bursts: list[ColdBurst] | None = None  # where the measured and simulated cold starts differ

    def misses(self) -> list[str]:
        """What is outside the goals, with the assumption most likely behind it."""
        out = []
        cold_ms, want_ms = self.measured_cold_p50_ms, self.predicted_cold_p50_ms
        if cold_ms and want_ms and cold_ms > 2 * want_ms:
            # A start this much slower than assumed keeps the activator's buffered requests in the KPA's
            # panic window: it scales out far, and replicas the node cannot fit wait Pending but count.
            why = (
                "the node may be full: set platforms.knative.max_nodes and node_free_vcpu, and a start waits "
                "for room (a replica told to go holds its CPU termination_drain_s longer)"
                if self.capacity is None
                else "pod_start_s or termination_drain_s is too small for this cluster (scheduling, image "
                "pulls, a CPU-starved node)"
            )
            out.append(
                f"cold answers took {cold_ms / 1000:,.1f} s (median), {want_ms / 1000:,.1f} s predicted: "
                f"{why}; "
                f"replicas peaked at {self.measured_max_replicas}, {self.predicted_max_replicas} predicted"
            )
        if self.measured_cold and abs(self.predicted_cold / self.measured_cold - 1) > COLD_TOLERANCE:
            where = _burst_summary(self.cold_bursts or [])
            out.append(
                f"cold starts {self.predicted_cold:.1f} predicted, {self.measured_cold} measured: "
                + (
                    where
                    or "the scale-to-zero timing (stable_window_s, scale_to_zero_grace_s, the cluster's "
                    "config-autoscaler) differs"
                )
            )
        elif not self.measured_cold and self.predicted_cold:
            out.append(f"cold starts {self.predicted_cold:.1f} predicted, none measured")
        got = self.measured_replica_seconds
        if got and abs(self.predicted_replica_seconds / got - 1) > REPLICA_SECONDS_TOLERANCE:
            out.append(
                f"replica-seconds {self.predicted_replica_seconds:,.0f} predicted, {got:,.0f} measured: "
                "the KPA's windows or pod_start_s (scheduling, image pull) differ from the cluster's"
            )
        return out


def _cold_p50_ms(sim: Any) -> float | None:
    waited = sim.latency_s[sim.cold & sim.ok]
    return float(np.median(waited)) * 1000 if waited.size else None


def _knative_prediction(loaded: Any, profile: Profile, advice: Any, duration: float) -> tuple[Any, Any, Any]:
    from zeroserve.advise.sweep import Sweep

    pick = advice.winners.get("knative") or (advice.by_platform.get("knative") or [None])[0]
    if pick is None:
        raise ValidateError("no Knative configuration to validate: enable platforms.knative")
    workload = shortened(loaded.workload, duration)
    arrivals = np.asarray(workload.arrivals(), dtype=float)
    predicted = Sweep(loaded.spec, profile, arrivals, workload.duration).run("knative", pick.knobs)
    assert predicted.sim is not None
    return pick, workload, predicted


def predict_knative(loaded: Any, profile: Profile, advice: Any, duration: float) -> dict[str, Any]:
    """What validate_knative will compare against, without a cluster: to size a workload first."""
    pick, _, predicted = _knative_prediction(loaded, profile, advice, duration)
    sim = predicted.sim
    return {
        "knobs": pick.knobs,
        "requests": sim.ok.size // sim.runs,
        "cold_starts": sim.cold_starts,
        "cold_requests": sim.cold_requests,
        "cold_p50_ms": _cold_p50_ms(sim),
        "pending_s": sim.pending_s,
        "replica_starts": sim.starts,
        "replica_seconds": predicted.replica_seconds,
        "p50_ms": predicted.p50_ms,
        "p99_ms": predicted.p99_ms,
    }


def _pods_left(api: Any, namespace: str, selector: str) -> int:
    """Pods of the service, terminating ones included: they hold their node's CPU until gone."""
    return len(api.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=30).items)


def _wait_for_no_pods(api: Any, namespace: str, selector: str, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while _pods_left(api, namespace, selector):
        if time.monotonic() > deadline:
            raise ValidateError(f"knative: the service still has pods after {within_s:.0f} s ({what})")
        time.sleep(0.5)


def measure_pod_start(
    url: str, host: str | None, model: str, payload: dict[str, Any], api: Any, namespace: str, selector: str
) -> float:
    """The cluster's own pod start: one request to the service at zero, its latency less the runtime's
    init and inference time (the answer's cold-start headers). Scheduling, the sandbox, the containers
    and the activator's probing are what is left, which is what pod_start_s assumes. Waits for the pods
    to be gone before and after (a terminating one holds its node's CPU)."""
    import http.client
    from urllib.parse import urlsplit

    from zeroserve_runtime.protocol import headers as zh

    _wait_for_no_pods(api, namespace, selector, 300, "before measuring its pod start")
    parts = urlsplit(url if "://" in url else f"http://{url}")
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=120)
    try:
        started = time.monotonic()
        conn.request(
            "POST",
            f"{parts.path.rstrip('/')}/v2/models/{model}/infer",
            orjson.dumps(payload),
            {"Content-Type": "application/json", **({"Host": host} if host else {})},
        )
        resp = conn.getresponse()
        body = resp.read()
        latency = time.monotonic() - started
    except OSError as e:
        raise ValidateError(f"knative: no answer from {url}: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise ValidateError(f"knative: {url} answered {resp.status}: {body[:300].decode(errors='replace')}")
    if resp.getheader(zh.COLD_START) != "1":
        raise ValidateError("knative: the first answer from zero carries no cold-start header")
    init = float(resp.getheader(zh.INIT_SECONDS) or 0)
    infer = zh.parse_server_timing(resp.getheader(zh.SERVER_TIMING)) or 0.0
    _wait_for_no_pods(api, namespace, selector, 300, "after measuring its pod start")
    return max(0.0, latency - init - infer)


def _with_pod_start(loaded: Any, pod_start_s: float) -> Any:
    spec = loaded.spec
    kn = spec.platforms.knative
    kn = kn.model_copy(update={"assumptions": kn.assumptions.model_copy(update={"pod_start_s": pod_start_s})})
    spec = spec.model_copy(update={"platforms": spec.platforms.model_copy(update={"knative": kn})})
    return loaded.model_copy(update={"spec": spec})


def validate_knative(
    loaded: Any,
    profile: Profile,
    advice: Any,
    url: str,
    namespace: str,
    selector: str,
    out: Path,
    console: Any,
    duration: float,
    host: str | None = None,
    kubeconfig: Path | None = None,
    measure_start: bool = True,
) -> KnativeComparison:
    """Bench a ModelService deployed with the Knative pick's settings (advise writes it as
    modelservice.yaml; apply it first) on the same arrivals cut to `duration`, recording its replicas,
    and compare cold starts, replica-seconds, p50 and p99 with the simulation of that configuration.
    Measure on an MMPP whose quiet periods straddle the scale-to-zero window: sporadic bursts alone all
    start cold and prove little.

    With `measure_start`, the cluster's pod start is measured first (measure_pod_start) and the
    simulation uses it for pod_start_s: that is a property of the cluster, not of the model, and the
    assumption's default comes from another one."""
    from zeroserve_loadgen.bench import BenchOptions, run_bench
    from zeroserve_loadgen.replicas import _api
    from zeroserve_loadgen.runner import LoadgenError
    from zeroserve_loadgen.targets import ReplicaSource, Target

    assumed = loaded.spec.platforms.knative.assumptions.pod_start_s
    measured_start: float | None = None
    if measure_start:
        api = _api(str(kubeconfig) if kubeconfig else None, None)
        measured_start = measure_pod_start(
            url, host, loaded.spec.model.name, loaded.payload, api, namespace, selector
        )
        console.print(
            f"knative: a start from zero took {measured_start:.2f} s before the runtime's own init "
            f"(pod_start_s assumed {assumed:g} s); simulating with it",
            highlight=False,
        )
        loaded = _with_pod_start(loaded, measured_start)
    spec = loaded.spec
    pick, workload, predicted = _knative_prediction(loaded, profile, advice, duration)
    target = Target(
        name="knative",
        kind="oip-rest",
        url=url,
        model=spec.model.name,
        headers={"Host": host} if host else {},
        replicas=ReplicaSource(namespace=namespace, selector=selector, kubeconfig=kubeconfig),
        pricing={"model": "node", "preset": spec.platforms.knative.node, "replica_cpu": pick.knobs["vcpu"]},
    )
    try:
        result = run_bench([target], loaded.payload, workload, BenchOptions(out_dir=out / "knative"), console)
    except LoadgenError as e:
        raise ValidateError(f"knative: {e}") from None
    t = result.report.targets[0]
    report = result.report
    flags = report.cold_start_flags
    measured_at = [s.scheduled_s for s, cold in zip(report.samples, flags, strict=True) if cold]
    arrivals = np.asarray(workload.arrivals(), dtype=float)
    comparison = KnativeComparison(
        knobs=pick.knobs,
        predicted_cold=predicted.sim.cold_starts,
        measured_cold=t.cold_starts,
        predicted_replica_seconds=predicted.replica_seconds,
        measured_replica_seconds=t.replica_seconds,
        predicted_p50_ms=predicted.p50_ms,
        measured_p50_ms=t.latency_ms.get("p50"),
        predicted_p99_ms=predicted.p99_ms,
        measured_p99_ms=t.latency_ms.get("p99"),
        predicted_cold_p50_ms=_cold_p50_ms(predicted.sim),
        measured_cold_p50_ms=t.cold_latency_ms.get("p50"),
        predicted_max_replicas=predicted.sim.max_replicas,
        measured_max_replicas=t.max_replicas,
        capacity=spec.platforms.knative.capacity(pick.knobs["vcpu"]),
        pod_start_s=spec.platforms.knative.assumptions.pod_start_s,
        pod_start_measured=measured_start is not None,
        cold_bursts=cold_bursts(measured_at, predicted.sim.cold_start_at, arrivals),
    )
    (out / "validate-knative.json").write_bytes(
        orjson.dumps({**asdict(comparison), "misses": comparison.misses()}, option=orjson.OPT_INDENT_2)
    )
    console.print(
        f"knative {pick.label()}: cold starts {comparison.predicted_cold:.1f} predicted / "
        f"{comparison.measured_cold} measured; replica-seconds {comparison.predicted_replica_seconds:,.0f} / "
        f"{comparison.measured_replica_seconds or 0:,.0f}; p50 {comparison.predicted_p50_ms:,.1f} / "
        f"{comparison.measured_p50_ms or 0:,.1f} ms; p99 {comparison.predicted_p99_ms:,.1f} / "
        f"{comparison.measured_p99_ms or 0:,.1f} ms",
        highlight=False,
        markup=False,
    )
    for line in comparison.misses():
        console.print(f"  {line}", highlight=False, markup=False)
    return comparison
