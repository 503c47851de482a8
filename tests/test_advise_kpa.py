"""The simulator's Knative Pod Autoscaler, part by part as knative.dev/serving v0.50 has it: the metric
windows (bucketing.go), the decider (autoscaler.go) and the scaler (kpa/scaler.go), each against figures
worked out by hand from that source, then the first scale-up of a burst through the whole pool."""

from __future__ import annotations

import numpy as np
import pytest

from zeroserve.advise.kpa import KPA, Decider, Scaler, Window
from zeroserve.advise.simulate import simulate_pool


def test_a_window_averages_since_its_first_write_until_it_is_a_window_old() -> None:
    buckets = [0.0] * 40
    w = Window(6)
    assert w.average(buckets, 5.0) == 0  # nothing written yet
    buckets[10], buckets[11] = 3.0, 1.0
    w.write(10)
    # One bucket since the first write: its value, not a sixth of it.
    assert w.average(buckets, 10.5) == pytest.approx(3.0)
    w.write(11)
    assert w.average(buckets, 11.9) == pytest.approx(2.0)
    # Two seconds without a write: the average is over the valid buckets, min(2 written, 6 - 2 stale).
    assert w.average(buckets, 13.0) == pytest.approx(2.0)
    # A whole window without a write: zero.
    assert w.average(buckets, 17.0) == 0
    # A write a window or more after the last restarts the first write.
    buckets[20] = 6.0
    w.write(20)
    assert (w.first, w.last) == (20, 20)
    assert w.average(buckets, 20.0) == pytest.approx(6.0)


def test_a_gap_shorter_than_the_window_counts_as_zeros_over_the_whole_window() -> None:
    buckets = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 0.0]
    w = Window(6)
    for s in (0, 1, 2, 3, 6):
        w.write(s)
    # Written at 0-3 and 6 (a gap of 3 < 6): the first write stays at 0, and (0, 6] is averaged over 6.
    assert w.first == 0
    assert w.average(buckets, 6.4) == pytest.approx((1 + 1 + 1 + 0 + 0 + 2) / 6)
    # Years of writes later, a full window: the last six buckets over six.
    w2 = Window(3)
    for s in range(8):
        w2.write(s)
    assert w2.average(list(range(8)), 7.0) == pytest.approx((5 + 6 + 7) / 3)


def test_the_decider_panics_holds_its_panic_scale_and_calms_after_a_stable_window() -> None:
    d = Decider(KPA(target=1, target_utilization=0.7, stable_window_s=6, panic_threshold_percentage=200))
    # ceil(0.5 / 0.7) = 1 replica, and 1 / max(1, 0 ready) is below the threshold of 2: stable mode.
    assert d.desired(2.0, stable=0.5, panic=0.5, ready=0) == 1 and d.panic_since is None
    # The panic window asks for ceil(3 / 0.7) = 5 against 1 ready: panic, at 5.
    assert d.desired(4.0, stable=1.0, panic=3.0, ready=1) == 5 and d.panic_since == 4.0
    # Calm again, but within a stable window of the last panic tick: it keeps the panic scale.
    assert d.desired(8.0, stable=1.0, panic=0.1, ready=5) == 5
    # A stable window since then: stable mode, ceil(1 / 0.7) = 2, and no fewer than floor(5 / 2) = 2.
    assert d.desired(10.5, stable=1.0, panic=0.1, ready=5) == 2 and d.panic_since is None
    # Scale-down is bounded by the rate: 9 ready go to at least floor(9 / 2) = 4.
    assert d.desired(12.0, stable=0.0, panic=0.0, ready=9) == 4


def test_the_scaler_bounds_activates_and_scales_to_zero_after_a_stable_window_active() -> None:
    kpa = KPA(target=1, stable_window_s=6, scale_to_zero_grace_s=6)
    s = Scaler(kpa, min_scale=0, max_scale=3)
    assert s.scale(0.0, want=5, have=1, ready=0, first_ready=None, stable=2, panic=2) == 3  # max
    # Activating (nothing ready since zero): the scale stays, whatever the decider says.
    assert s.scale(2.0, want=0, have=3, ready=0, first_ready=None, stable=0, panic=0) == 3
    # Active since 3.0, less than a stable window: one replica kept for the rest of the idle period.
    assert s.scale(4.0, want=0, have=3, ready=1, first_ready=3.0, stable=0, panic=0) == 1
    assert s.active_since == 3.0
    # A stable window active, and in the activator's path since the start: to zero without the grace wait.
    assert s.scale(10.0, want=0, have=1, ready=1, first_ready=3.0, stable=0, panic=0) == 0
    assert s.active_since is None
    # With a retention period, the last replica stays that long after the PodAutoscaler went inactive.
    kept = Scaler(KPA(target=1, stable_window_s=6, retention_s=10), min_scale=0, max_scale=3)
    kept.scale(1.0, want=1, have=1, ready=1, first_ready=1.0, stable=1, panic=1)
    assert kept.scale(10.0, want=0, have=1, ready=1, first_ready=1.0, stable=0, panic=0) == 1
    assert kept.scale(19.0, want=0, have=1, ready=1, first_ready=1.0, stable=0, panic=0) == 1
    assert kept.scale(20.0, want=0, have=1, ready=1, first_ready=1.0, stable=0, panic=0) == 0
    # minReplicas is a floor.
    floor = Scaler(kpa, min_scale=1, max_scale=3)
    assert floor.scale(50.0, want=0, have=1, ready=1, first_ready=0.0, stable=0, panic=0) == 1


def test_the_first_scale_up_of_a_burst_after_idle_sees_the_burst_undiluted() -> None:
    # 20 requests in the second from 100 s, after 100 s at zero; each takes 0.5 s and the replica the
    # activator starts at 100.0 serves 2 s later, so every request waits. In flight per second, as the
    # simulator books them when routed: second 100: sum(1 - 0.05 k, k < 20) = 10.5; second 101: 20;
    # second 102: 0.5 + 19 = 19.5 (the first ends at 102.5). At the tick at 102 the windows have been
    # written since 100 only, so both average 50 / 3 over 3 buckets (Knative's WindowAverage), and the
    # decider asks for ceil(16.67 / 0.7) = 24. Averaged over the whole 60 s window, as the simulator did
    # before, the panic window would have said 50 / 6 and asked for 12.
    arr = 100.0 + 0.05 * np.arange(20)
    kpa = KPA(target=1, stable_window_s=60, scale_to_zero_grace_s=30, tick_s=2)
    sim = simulate_pool(arr, np.full(20, 0.5), 2.0, 0.0, 60, 130, 0, 50, kpa=kpa)
    assert sim.replicas[:3] == [(0.0, 0), (100.0, 1), (102.0, 24)]
    assert sim.max_replicas == 24
