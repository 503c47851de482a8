"""`zeroserve advise --validate` on a cluster: the Knative pick deployed as a real ModelService, benched
on the same arrivals with its replicas recorded, and its cold starts, replica-seconds and latency
compared with the simulation of that configuration; where the cold starts differ, the bursts they differ
at, and what those point at. A run can be recorded (`record`) and re-predicted later without a cluster
(`repredict`), which is how the test suite holds the simulator to real Knative."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from zeroserve.advise.profile import Profile
from zeroserve.advise.validate import ValidateError, shortened

P50_TOLERANCE = 0.20
P99_TOLERANCE = 0.30
# A p99 over fewer requests rests on a handful of them (over 100, on the slowest one): it is shown, not
# judged.
P99_MIN_REQUESTS = 500


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
    kept = record(spec, profile, pick.knobs, arrivals, workload.duration, comparison, measured_at, t.replicas)
    (out / "record.json").write_bytes(orjson.dumps(kept))
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


# -- recorded runs, re-predicted without a cluster ---------------------------------------------------------

RECORD_VERSION = 1


def record(
    spec: Any,
    profile: Profile,
    knobs: dict[str, Any],
    arrivals: np.ndarray,
    duration_s: float,
    comparison: KnativeComparison,
    cold_start_at: list[float],
    replicas: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """What a measured run needs to be predicted again by a later simulator, and what it measured: the
    advise file (the cluster's pod start and room in its assumptions), the runtime's profile, the pick,
    the arrivals as sent, and the cold starts, replica-seconds and replica count over time as counted.
    About 8 KB for a 600 s run; the test suite keeps some (tests/data/advise-knative/) and holds the
    simulator to them."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    dumped["model"] = {"path": Path(str(spec.model.path)).name, "name": spec.model.name}
    batch = knobs.get("max_batch_size", 1)
    parallel = knobs.get("parallel_inferences", 1) > 1

    def samples(by: dict[int, list[float]], keep: Any) -> dict[str, list[float]]:
        return {str(k): [round(x, 7) for x in v] for k, v in by.items() if keep(k)}

    points = [
        {
            "vcpu": p.vcpu,
            "threads": p.threads,
            "limited": p.limited,
            "runtime_cold": p.runtime_cold,
            "runtime_s": samples(p.runtime_s, lambda b: b <= batch),
            "parallel_s": samples(p.parallel_s, lambda _: parallel),
            "parallel_alone_s": samples(p.parallel_alone_s, lambda _: parallel),
        }
        for p in profile.points
    ]
    return {
        "version": RECORD_VERSION,
        "advise": dumped,
        "profile": {"model_sha256": profile.model_sha256, "model_name": profile.model_name, "points": points},
        "knobs": knobs,
        "duration_s": duration_s,
        "arrivals": [round(float(a), 4) for a in arrivals],
        "measured": {
            "cold_starts": comparison.measured_cold,
            "cold_start_at": [round(t, 3) for t in cold_start_at],
            "replica_seconds": comparison.measured_replica_seconds,
            "max_replicas": comparison.measured_max_replicas,
            "p50_ms": comparison.measured_p50_ms,
            "replicas": [[round(float(r["t"]), 3), int(r["total"])] for r in replicas or []],
        },
        "predicted_then": {
            "cold_starts": comparison.predicted_cold,
            "replica_seconds": comparison.predicted_replica_seconds,
        },
    }


def repredict(kept: dict[str, Any]) -> Any:
    """A recorded run predicted by this simulator: the Candidate (its `sim` kept) for the recorded pick on
    the recorded arrivals."""
    from zeroserve.advise.config import parse
    from zeroserve.advise.sweep import Sweep

    if kept.get("version") != RECORD_VERSION:
        raise ValidateError(f"a record of version {kept.get('version')}; this reads {RECORD_VERSION}")
    spec = parse(kept["advise"], "recorded run")
    profile = Profile.from_json(orjson.dumps(kept["profile"]))
    arrivals = np.asarray(kept["arrivals"], dtype=float)
    return Sweep(spec, profile, arrivals, kept["duration_s"]).run("knative", kept["knobs"])
