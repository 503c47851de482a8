"""The load generator's pure parts: workloads as rates over time, MMPP statistics against theory, the
merged schedule and its split between workers, cold-start identification, and cost arithmetic checked
against hand-computed cases. None of this imports locust, so none of it patches this process."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from zeroserve_loadgen.plan import RunPlan, Sample, schedule
from zeroserve_loadgen.pricing import (
    CloudRunPricing,
    Invocation,
    LambdaPricing,
    NodePricing,
    cost_per_million,
)
from zeroserve_loadgen.summary import Report, cold_flags, summarize
from zeroserve_loadgen.targets import Target
from zeroserve_loadgen.workloads import MMPP, Constant, Sporadic, Steps

PAYLOAD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def _target(name: str = "t", **kw: object) -> Target:
    return Target(name=name, kind="oip-rest", url="http://127.0.0.1:1", model="m", **kw)


# -- workloads --------------------------------------------------------------------------------------------


def test_constant_rate_and_poisson_count() -> None:
    w = Constant(rate=50, duration_s=200, seed=3)
    assert w.rate_at(0) == w.rate_at(199.9) == 50
    assert w.rate_at(200) == 0 and w.rate_at(-1) == 0
    times = w.arrivals()
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 200
    # 10,000 expected; a Poisson count is within 4 sigma (400) of it.
    assert abs(len(times) - 10_000) < 400
    gaps = np.diff(times)
    assert abs(gaps.mean() - 1 / 50) < 0.001
    # Exponential gaps: the standard deviation equals the mean.
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05


def test_uniform_arrivals_are_evenly_spaced() -> None:
    times = Constant(rate=10, duration_s=3, arrival="uniform").arrivals()
    assert len(times) == 30
    assert np.allclose(np.diff(times), 0.1)


def test_same_seed_same_arrivals_other_seed_other_arrivals() -> None:
    a = MMPP(rates=(1, 30), mean_sojourn_s=(5, 2), duration_s=60, seed=11)
    assert np.array_equal(a.arrivals(), MMPP(**{**a.model_dump(), "seed": 11}).arrivals())
    assert not np.array_equal(a.arrivals(), MMPP(**{**a.model_dump(), "seed": 12}).arrivals())


def test_steps_follow_their_rates() -> None:
    w = Steps(
        steps=[{"rate": 10, "duration_s": 5}, {"rate": 0, "duration_s": 5}, {"rate": 40, "duration_s": 5}]
    )
    assert [w.rate_at(t) for t in (0, 4.99, 5, 9.99, 10, 14.99, 15)] == [10, 10, 0, 0, 40, 40, 0]
    assert w.duration == 15
    times = w.arrivals()
    assert not np.any((times >= 5) & (times < 10)), "an idle step sends nothing"
    assert w.mean_rate() == pytest.approx((50 + 200) / 15)


def test_mmpp_long_run_statistics_match_theory() -> None:
    w = MMPP(rates=(2, 20), mean_sojourn_s=(30, 10), duration_s=200_000, seed=5)
    states = w.states()
    time_in = [sum(e - s for s, e, st in states if st == k) for k in (0, 1)]
    p0, p1 = w.stationary()
    assert (p0, p1) == pytest.approx((0.75, 0.25))
    assert time_in[1] / w.duration_s == pytest.approx(p1, abs=0.015)
    # Sojourn times are exponential with the given means (the last visit is cut by the horizon).
    for k, mean in ((0, 30), (1, 10)):
        visits = np.array([e - s for s, e, st in states[:-1] if st == k])
        assert visits.mean() == pytest.approx(mean, rel=0.05)
    assert w.theoretical_mean_rate() == pytest.approx(0.75 * 2 + 0.25 * 20)
    times = w.arrivals()
    assert len(times) / w.duration_s == pytest.approx(w.theoretical_mean_rate(), rel=0.03)
    # Arrivals fall into each state in proportion to its rate times its time.
    in_burst = sum(((times >= s) & (times < e)).sum() for s, e, st in states if st == 1)
    assert in_burst / len(times) == pytest.approx(
        20 * time_in[1] / (20 * time_in[1] + 2 * time_in[0]), abs=0.01
    )
    # rate_at reads the realized path.
    s, e, st = states[3]
    assert w.rate_at((s + e) / 2) == w.rates[st]


def test_mmpp_refuses_bad_parameters() -> None:
    with pytest.raises(ValidationError, match="mean_sojourn_s"):
        MMPP(rates=(1, 2), mean_sojourn_s=(0, 1), duration_s=10)
    with pytest.raises(ValidationError, match="rates"):
        MMPP(rates=(-1, 2), mean_sojourn_s=(1, 1), duration_s=10)


def test_sporadic_bursts_all_start_cold() -> None:
    w = Sporadic(bursts=4, burst_rate=20, burst_s=2, idle_s=30, seed=1)
    assert w.duration == 4 * 32
    assert w.rate_at(10) == 0 and w.rate_at(31) == 20 and w.rate_at(33) == 0
    times = w.arrivals()
    for b in range(4):
        start = b * 32 + 30
        assert ((times >= start) & (times < start + 2)).sum() > 10
    samples = [Sample(0, t, t, 0.01, 200, True, False, -1, -1, -1, "") for t in times]
    _, by_gap = cold_flags(samples, _target(idle_window_s=20))
    assert by_gap.sum() == 4, "each burst's first request follows an idle gap longer than the window"


# -- schedule -----------------------------------------------------------------------------------------------


def _plan(mode: str, n: int = 3) -> RunPlan:
    return RunPlan(
        targets=[_target(f"t{k}") for k in range(n)],
        payload=PAYLOAD,
        workload=Constant(rate=20, duration_s=10, seed=2),
        mode=mode,
        gap_s=5,
    )


def test_interleaved_gives_every_target_the_same_arrivals() -> None:
    plan = _plan("interleaved")
    s = schedule(plan)
    assert np.all(np.diff(s.times) >= 0)
    per = [s.times[s.targets == k] for k in range(3)]
    assert np.array_equal(per[0], per[1]) and np.array_equal(per[1], per[2])
    assert plan.windows() == [(0, 10)] * 3 and plan.total_duration() == 10


def test_sequential_runs_targets_one_after_another() -> None:
    plan = _plan("sequential")
    s = schedule(plan)
    assert plan.windows() == [(0, 10), (15, 25), (30, 40)]
    for k, (start, end) in enumerate(plan.windows()):
        mine = s.times[s.targets == k]
        assert mine.min() >= start and mine.max() < end
        assert np.allclose(mine - start, s.times[s.targets == 0])


def test_worker_slices_partition_the_schedule() -> None:
    s = schedule(_plan("interleaved"))
    parts = [s.slice(i, 3) for i in range(3)]
    assert sum(len(p.times) for p in parts) == len(s.times)
    merged = np.sort(np.concatenate([p.times for p in parts]))
    assert np.array_equal(merged, s.times)
    # Each worker sees every target.
    assert all(set(p.targets.tolist()) == {0, 1, 2} for p in parts)


# -- cold starts and summaries ------------------------------------------------------------------------


def test_cold_by_gap_counts_idle_from_the_end_of_the_last_request() -> None:
    # sent, latency: the third request follows the second's *end* by 0.5 s only, though its send is 5 s later.
    rows = [(0.0, 0.1), (1.0, 4.5), (6.0, 0.1), (20.0, 0.1)]
    samples = [Sample(0, s, s, lat, 200, True, False, -1, -1, -1, "") for s, lat in rows]
    _, gap = cold_flags(samples, _target(idle_window_s=3))
    assert gap.tolist() == [True, False, False, True]
    _, none = cold_flags(samples, _target())
    assert not none.any()


def test_cold_header_counts_only_when_the_request_waited_for_the_start() -> None:
    def first(age: float) -> Sample:
        return Sample(0, 0.0, 0.0, 0.5, 200, True, True, 0.01, 1.5, age, "")

    target = _target(cold_start_max_ready_age_s=2)
    header, _ = cold_flags([first(0.02), first(1.9), first(30.0), first(-1)], target)
    # Held until ready (Knative's activator, Lambda): cold. Started long before (a readiness check,
    # pre-warming): not cold. A target that does not say how long: trusted.
    assert header.tolist() == [True, True, False, True]
    # Either way the init is billed once, with the first answer.
    late = summarize(_target(pricing={"model": "lambda", "memory_mb": 1024}), [first(30.0)], (0, 10), 1)
    assert late.cold_by_header == 0
    assert late.cost_per_1m_usd == pytest.approx((0.01 + 1.5) * 0.0000166667 * 1e6 + 0.2)


def test_summary_separates_cold_and_warm_and_counts_failures() -> None:
    samples = [
        Sample(0, 0.0, 0.0, 1.5, 200, True, True, 0.010, 1.2, 0.05, ""),  # cold by header
        *[Sample(0, t, t, 0.020, 200, True, False, 0.004, -1, -1, "") for t in np.arange(1, 10, 0.5)],
        Sample(0, 9.6, 9.6, 0.001, 503, False, False, -1, -1, -1, "HTTP 503: busy"),
        Sample(0, 9.7, 9.7, 2.0, 0, False, False, -1, -1, -1, "ConnectionRefusedError"),
    ]
    r = summarize(_target(), samples, (0.0, 10.0), planned=22)
    assert r.requests == 21 and r.successes == 19 and r.planned == 22
    assert r.success_ratio == pytest.approx(19 / 21)
    # The last request ended 1.7 s after the planned window: the run held the target that long.
    assert r.wall_s == pytest.approx(11.7)
    assert r.throughput_rps == pytest.approx(19 / 11.7)
    assert r.cold_starts == r.cold_by_header == 1 and r.cold_by_gap == 0
    assert r.cold_latency_ms["p50"] == pytest.approx(1500)
    assert r.warm_latency_ms["max"] == pytest.approx(20)
    assert r.latency_ms["max"] == pytest.approx(1500), "failures are not in the latency figures"
    assert r.server_ms_p50 == pytest.approx(4)
    assert r.errors == {"HTTP 503: busy": 1, "ConnectionRefusedError": 1}


def test_report_counts_answers_per_replica_and_per_revision_where_the_target_names_them() -> None:
    target = Target(name="t", kind="oip-rest", url="http://127.0.0.1:9", model="m")
    plan = RunPlan(targets=[target], payload=PAYLOAD, workload=Constant(rate=1, duration_s=10))

    def at(t: float, replica: str, revision: str, ok: bool = True) -> Sample:
        return Sample(
            0, t, t, 0.01, 200 if ok else 503, ok, False, -1, -1, -1, "" if ok else "busy", replica, revision
        )

    # Revision 1 alone, both on one replica; then the two overlap while the rollout moves; then only 2.
    samples = [at(t, "a", "m-1") for t in (0, 1, 2, 3)] + [at(4, "b", "m-2"), at(5, "a", "m-1")]
    samples += [at(t, "b", "m-2") for t in (6, 7, 8)] + [at(9, "c", "m-2", ok=False)]
    r = summarize(target, samples, (0, 10), planned=10)
    assert r.answered_by == {"a": 5, "b": 4}  # failures name no answering replica
    assert r.revisions == {
        "m-1": {"answers": 5, "first_s": 0, "last_s": 5},
        "m-2": {"answers": 4, "first_s": 4, "last_s": 8},
    }
    # A target that names nobody has neither key in the report, rather than empty ones.
    plain = summarize(target, [Sample(0, 0, 0, 0.01, 200, True, False, -1, -1, -1, "")], (0, 1), planned=1)
    assert plain.answered_by is None and plain.revisions is None
    out = Report(plan, [plain], []).to_dict()["targets"][0]
    assert "answered_by" not in out and "revisions" not in out


def test_report_redacts_secrets_and_warns_about_what_did_not_happen() -> None:
    target = Target(
        name="t",
        kind="oip-rest",
        url="http://user:hunter2@127.0.0.1:9/",
        model="m",
        headers={"x-api-key": "s3cr3t"},
    )
    plan = RunPlan(targets=[target], payload=PAYLOAD, workload=Constant(rate=1, duration_s=1))
    # 19 sends on time and one held back 1.5 s: too few to be saturation, but held back all the same.
    samples = [Sample(0, t, t, 0.01, 200, True, False, -1, -1, -1, "") for t in np.arange(19) / 20]
    samples.append(Sample(0, 0.2, 1.7, 0.01, 200, True, False, -1, -1, -1, ""))
    r = summarize(target, samples, (0, 1), planned=21)
    report = Report(plan, [r], samples, run_errors=["worker w1: RuntimeError: boom"])
    text = str(report.to_dict())
    assert "s3cr3t" not in text and "hunter2" not in text
    assert "127.0.0.1:9" in text and "x-api-key" in text
    warnings = report.warnings()
    assert warnings[0] == "worker w1: RuntimeError: boom"
    assert "t: only 20 of 21 planned requests were sent" in warnings
    assert any("1.5 s late" in w for w in warnings)


# -- pricing ------------------------------------------------------------------------------------------------


def test_lambda_cost_rounds_up_to_the_millisecond() -> None:
    p = LambdaPricing(memory_mb=2048)
    # 123.4 ms bills as 124 ms: 0.124 s * 2 GB * $0.0000166667 + $0.20 / 1M.
    assert p.request_cost(Invocation(duration_s=0.1234)) == pytest.approx(0.124 * 2 * 0.0000166667 + 0.2e-6)
    # Exactly 100 ms stays 100 ms.
    assert p.request_cost(Invocation(duration_s=0.1)) == pytest.approx(0.1 * 2 * 0.0000166667 + 0.2e-6)


def test_lambda_arm_bills_init_of_cold_starts() -> None:
    p = LambdaPricing(memory_mb=1024, architecture="arm64")
    # 10.1 ms + 500 ms init = 510.1 ms, billed 511 ms at the arm price.
    assert p.request_cost(Invocation(duration_s=0.0101, init_s=0.5)) == pytest.approx(
        0.511 * 1 * 0.0000133334 + 0.2e-6
    )
    no_init = LambdaPricing(memory_mb=1024, architecture="arm64", bill_init=False)
    assert no_init.request_cost(Invocation(duration_s=0.0101, init_s=0.5)) == pytest.approx(
        0.011 * 0.0000133334 + 0.2e-6
    )


def test_cloud_run_rounds_up_to_100_ms() -> None:
    p = CloudRunPricing(vcpu=1, memory_gib=2)
    # 123 ms bills 200 ms of 1 vCPU ($0.000024/s) and 2 GiB ($0.0000025/GiB-s), plus $0.40 / 1M.
    assert p.request_cost(Invocation(duration_s=0.123)) == pytest.approx(
        0.2 * (0.000024 + 2 * 0.0000025) + 0.4e-6
    )
    assert p.request_cost(Invocation(duration_s=0.2)) == pytest.approx(0.2 * 0.000029 + 0.4e-6)


def test_node_cost_is_wall_time_over_inferences() -> None:
    p = NodePricing(preset="aws-c7i.xlarge")
    # One hour of a $0.1785/h node serving 1,000 inferences: $178.50 per 1M.
    assert cost_per_million(p, [], successes=1000, wall_s=3600) == pytest.approx(178.5)
    two = NodePricing(hourly_usd=1.0, nodes=2, preset=None)
    assert cost_per_million(two, [], successes=7200, wall_s=1800) == pytest.approx(1.0 * 2 * 0.5 / 7200 * 1e6)
    with pytest.raises(ValidationError, match="unknown preset"):
        NodePricing(preset="aws-z9.mega")


def test_cost_per_million_counts_failed_invocations_and_needs_a_success() -> None:
    p = LambdaPricing(memory_mb=1024)
    invs = [Invocation(duration_s=0.05)] * 4
    per_request = 0.05 * 1 * 0.0000166667 + 0.2e-6
    assert cost_per_million(p, invs, successes=2, wall_s=10) == pytest.approx(4 * per_request / 2 * 1e6)
    assert cost_per_million(p, invs, successes=0, wall_s=10) is None
    assert math.isclose(cost_per_million(p, invs, successes=4, wall_s=10), per_request * 1e6)


def test_pricing_defaults_follow_the_target_kind() -> None:
    assert isinstance(
        Target(name="l", kind="lambda-url", url="https://x", model="m").effective_pricing(), LambdaPricing
    )
    assert isinstance(
        Target(name="g", kind="gcf", url="https://x", model="m").effective_pricing(), CloudRunPricing
    )
    assert isinstance(_target().effective_pricing(), NodePricing)


def test_pure_modules_do_not_import_locust() -> None:
    """locust patches the process with gevent on import: only a bench run may do that, never the CLI."""
    code = (
        "import sys, zeroserve.cli, zeroserve_loadgen.summary, zeroserve_loadgen.targets;"
        "zeroserve.cli.build_parser(); print('locust' in sys.modules, 'gevent' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("doc", ["README.md", "runtimes/lambda/README.md", "runtimes/gcf/README.md"])
def test_documented_bench_files_are_valid(doc: str) -> None:
    """The bench-file examples users copy from the docs must pass the same validation as their own."""
    import yaml
    from zeroserve_loadgen.targets import BenchFile

    text = (Path(__file__).resolve().parent.parent / doc).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    examples = [yaml.safe_load(b) for b in blocks if "targets:" in b]
    assert examples, f"{doc} has no bench-file example"
    for example in examples:
        # Examples name a payload file or leave the workload to the reader; fill in what they leave out.
        example["payload"] = PAYLOAD
        example.setdefault("workload", {"type": "constant", "rate": 1, "duration_s": 1})
        bench = BenchFile.model_validate(example)
        assert all(t.effective_pricing() for t in bench.targets)
