"""The adaptive warm policy (zeroserve/warm.py) as pure logic, and through the simulated Knative it will
drive: learning idle spells, the hybrid histogram's window, its fallbacks, and the bounds it keeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeroserve.advise.kpa import KPA
from zeroserve.advise.simulate import simulate_pool
from zeroserve.warm import Decision, IdleHistogram, WarmParams, WarmPolicy, decide

SCALED = WarmParams(bin_s=1, range_s=240, min_samples=10, max_keep_alive_s=120)


def test_bad_parameters_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="head_percentile must be below tail_percentile"):
        WarmParams(head_percentile=99, tail_percentile=5)
    with pytest.raises(ValueError, match="bin_s must be positive and at most range_s"):
        WarmParams(bin_s=600, range_s=60)
    with pytest.raises(ValueError, match="margin"):
        WarmParams(margin=1.5)
    with pytest.raises(ValueError, match="max_window_share"):
        WarmParams(max_window_share=0)


def test_the_histogram_bins_spells_and_reads_its_percentiles_at_bin_edges() -> None:
    hist = IdleHistogram.empty(SCALED)
    assert len(hist.counts) == 240
    for idle in [50.2] * 5 + [51.7] * 90 + [59.9] * 5 + [300.0]:
        hist.add(idle)
    assert (hist.counts[50], hist.counts[51], hist.counts[59], hist.out_of_range) == (5, 90, 5, 1)
    assert hist.samples == 101
    # The 5th percentile of the 100 binned spells is in bin 50: its lower edge, to be early.
    assert hist.percentile(5, upper=False) == 50
    # The 99th in bin 59: its upper edge, to be late.
    assert hist.percentile(99, upper=True) == 60
    # Three bins of 240 hold the binned spells: sqrt(240 x sum(p^2) - 1), sum(p^2) estimated from pairs.
    pairs = (5 * 4 + 90 * 89 + 5 * 4) / (100 * 99)
    assert hist.cv() == pytest.approx(math.sqrt(240 * pairs - 1))
    assert hist.cv() > 12
    # Compact for a status, and back; a different bin width starts afresh.
    again = IdleHistogram.from_compact(hist.to_compact(), SCALED)
    assert again == hist
    assert IdleHistogram.from_compact(hist.to_compact(), WarmParams(bin_s=2, range_s=240)).samples == 0


def test_the_window_covers_the_spells_from_the_head_less_the_cold_start_to_the_tail() -> None:
    hist = IdleHistogram.empty(SCALED)
    for idle in [50.5] * 5 + [55.5] * 90 + [59.5] * 5:
        hist.add(idle)
    d = decide(hist, SCALED, cold_start_s=1.5)
    # Head: bin 50's lower edge less 10% = 45; the replica starts 1.5 s before. Tail: 60 plus 10% = 66.
    assert d.mode == "histogram"
    assert d.warm_from_s == pytest.approx(45 - 1.5) and d.warm_until_s == pytest.approx(66)
    # The ceiling bounds the keep-alive, whatever the tail.
    capped = decide(hist, WarmParams(bin_s=1, range_s=240, min_samples=10, max_keep_alive_s=60), 1.5)
    assert capped.warm_until_s == 60


def test_no_pattern_no_samples_or_spells_beyond_the_range_keep_nothing() -> None:
    assert decide(IdleHistogram.empty(SCALED), SCALED, 1.0) == Decision(
        "learning", why="0 of 10 idle spells seen"
    )
    # Idle times that carry no pattern (exponential, Poisson arrivals): the bin counts are even.
    rng = np.random.default_rng(3)
    spread = IdleHistogram.empty(SCALED)
    for idle in rng.exponential(80, 400):
        spread.add(float(idle))
    d = decide(spread, SCALED, 1.0)
    assert d.mode == "fixed" and not d.keeps and "no pattern" in d.why
    # Ten of them: the pairs in one bin are few, so the counts' CV says nothing, and the window would span
    # them all (from a few seconds to the ceiling): nothing to time a pre-warm at.
    few = IdleHistogram.empty(SCALED)
    for idle in rng.exponential(40, 10):
        few.add(float(idle))
    assert decide(few, SCALED, 1.0).mode == "fixed"
    # Most spells longer than the histogram's range.
    far = IdleHistogram.empty(SCALED)
    for idle in [1000.0] * 8 + [50.0] * 4:
        far.add(idle)
    assert decide(far, SCALED, 1.0).mode == "fixed"


def test_the_policy_learns_from_requests_and_holds_a_replica_only_inside_its_window() -> None:
    policy = WarmPolicy(SCALED, cold_start_s=2.0)
    t = 0.0
    for _ in range(12):  # bursts of 3 requests, 60 s apart: spells of 58 s after each burst's last answer
        for k in range(3):
            policy.request(t + k * 0.5, t + k * 0.5 + 0.1)
            assert policy.warm(t + k * 0.5 + 0.05) == 0  # a request in flight: the platform holds it
        t += 60
    assert policy.hist.samples == 11 and policy.decision.mode == "histogram"
    end = policy.busy_until
    d = policy.decision
    assert policy.warm(end + d.warm_from_s - 0.1) == 0
    assert policy.warm(end + d.warm_from_s) == 1
    assert policy.warm(end + d.warm_until_s - 0.1) == 1
    assert policy.warm(end + d.warm_until_s + 1e-6) == 0
    # A gap shorter than a bin is no idle spell.
    policy.request(end + 0.5, end + 0.6)
    assert policy.hist.samples == 11


def _periodic(period: float, bursts: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.uniform(0.95 * period, 1.05 * period, bursts))
    return starts, np.sort(np.concatenate([s + np.sort(rng.uniform(0, 2, 10)) for s in starts]))


def test_simulated_knative_with_the_policy_answers_a_periodic_models_bursts_warm() -> None:
    # The test cluster's autoscaler (6 s windows): a burst every 60 s +-5%, 10 requests over 2 s each.
    starts, arr = _periodic(60, 40)
    kpa = KPA(target=1, stable_window_s=6, scale_to_zero_grace_s=6, tick_s=2)

    def run(warm: WarmPolicy | None) -> object:
        return simulate_pool(
            arr, np.full(len(arr), 0.02), 1.5, 0.003, 30, float(arr[-1]) + 60, 0, 10, kpa=kpa, warm=warm
        )

    default, adaptive = run(None), run(WarmPolicy(SCALED, cold_start_s=1.5))
    learned = starts[10]  # after the 10 spells the policy waits for
    cold_default = [t for t in default.cold_start_at[0] if t > learned]
    cold_adaptive = [t for t in adaptive.cold_start_at[0] if t > learned]
    assert len(cold_default) >= 30  # every burst starts cold without the policy
    assert len(cold_adaptive) <= 3  # at least 90% of the 30 bursts after learning warm
    assert adaptive.prewarms >= 27 and adaptive.prewarms_wasted <= 3
    assert adaptive.replica_seconds <= 1.5 * default.replica_seconds


def test_simulated_random_arrivals_fall_back_to_what_knative_does_alone() -> None:
    rng = np.random.default_rng(7)
    arr = np.cumsum(rng.exponential(40, 200))
    kpa = KPA(target=1, stable_window_s=6, scale_to_zero_grace_s=6, tick_s=2)
    svc = np.full(len(arr), 0.02)
    policy = WarmPolicy(SCALED, cold_start_s=1.5)
    default = simulate_pool(arr, svc, 1.5, 0.003, 30, float(arr[-1]) + 60, 0, 10, kpa=kpa)
    adaptive = simulate_pool(arr, svc, 1.5, 0.003, 30, float(arr[-1]) + 60, 0, 10, kpa=kpa, warm=policy)
    assert policy.decision.mode == "fixed", policy.decision
    assert adaptive.cold_starts <= default.cold_starts
    assert adaptive.replica_seconds <= 1.1 * default.replica_seconds


def test_the_policy_never_goes_past_max_scale_or_below_min_scale() -> None:
    _, arr = _periodic(60, 20)
    kpa = KPA(target=1, stable_window_s=6, scale_to_zero_grace_s=6, tick_s=2)
    svc = np.full(len(arr), 0.02)
    for min_scale, max_scale in ((0, 1), (2, 3)):
        sim = simulate_pool(
            arr,
            svc,
            1.5,
            0.003,
            30,
            float(arr[-1]) + 60,
            min_scale,
            max_scale,
            kpa=kpa,
            warm=WarmPolicy(SCALED, cold_start_s=1.5),
        )
        counts = [c for _, c in sim.replicas]
        assert max(counts) <= max_scale and min(counts[1:] or [min_scale]) >= min_scale, counts
    assert math.isinf(WarmPolicy(SCALED, 1.0).busy_until)
