"""Knative's Pod Autoscaler as the simulator runs it, in the three parts knative.dev/serving v0.50 has:

- `Collector` and `Window`: the metric collection (pkg/autoscaler/metrics/collector.go) and its one-second
  buckets (pkg/autoscaler/aggregation/bucketing.go, TimedFloat64Buckets), averaged over the stable and the
  panic window;
- `Decider`: observed concurrency to a desired scale (pkg/autoscaler/scaling/autoscaler.go, Scale): stable
  and panic modes, the scale-up and scale-down rates;
- `Scaler`: applies it (pkg/reconciler/autoscaling/kpa/scaler.go and kpa.go): min and max, activation, the
  active condition, scale to zero after a stable window active, the grace period and the retention.

simulate_pool keeps the replicas and routes the requests; each tick it asks these three for a scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class KPA:
    """Knative's Pod Autoscaler settings (the config-autoscaler keys; their defaults and sources are in
    config.KnativeAssumptions)."""

    target: float
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    tick_s: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    retention_s: float = 0.0
    max_scale_down_rate: float = 2.0
    max_scale_up_rate: float = 1000.0
    target_burst_capacity: float = 200.0
    tick_phase_s: float = 0.0  # when the first tick falls after the start, within tick_s

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100


class Window:
    """bucketing.go's TimedFloat64Buckets at a granularity of one second, over `seconds` buckets.

    WindowAverage divides by the buckets since the first write while that is younger than the window,
    and a write after a full window without one restarts the first write: right after a start from zero
    the average is over the second or two since the first request, not diluted by a window of nothing.
    With no write for a while (less than the window) the stale buckets drop out and the rest are
    averaged; a window without any write averages to zero."""

    def __init__(self, seconds: float) -> None:
        self.n = max(1, math.ceil(seconds - 1e-9))
        self.first: int | None = None
        self.last: int | None = None

    def write(self, second: int) -> None:
        if self.last is not None and second <= self.last:
            return
        if self.last is None or second - self.last >= self.n:
            self.first = second
        self.last = second

    def average(self, buckets: Sequence[float], now: float) -> float:
        if self.first is None or self.last is None:
            return 0.0
        j = int(now)  # now truncated to the second: its bucket, partly filled, counts
        stale = j - self.last
        if stale >= self.n:
            return 0.0
        lo, hi = max(self.first, j - self.n + 1, 0), min(j, self.last)
        valid = min(self.last - self.first + 1, self.n - max(0, stale))
        return math.fsum(buckets[lo : hi + 1]) / valid


class Collector:
    """What the autoscaler knows of one revision: in-flight request-seconds per one-second bucket (the
    activator's and the pods', each request counted once, as collector.go subtracts the proxied ones) and
    which seconds had a record. The scraper records every second while a pod is ready, zeros included;
    the activator reports every second it has requests in flight and once more, a zero, after the last."""

    def __init__(self, horizon_s: int, kpa: KPA) -> None:
        self.conc = [0.0] * horizon_s
        self.stable = Window(kpa.stable_window_s)
        self.panic = Window(kpa.panic_window_s)
        self._seen = -1  # seconds up to here have had their records; the current one is looked at again

    def add(self, a: float, b: float, weight: float = 1.0) -> None:
        """A request in flight from a to b (`weight` of them)."""
        conc, horizon = self.conc, len(self.conc)
        j = int(a)
        while a < b and j < horizon:
            edge = j + 1.0
            conc[j] += ((edge if edge < b else b) - a) * weight
            a, j = edge, j + 1

    def observe(self, now: float, ready_since: float | None) -> tuple[float, float]:
        """The stable and panic concurrency at `now`, with a pod ready since `ready_since` (None: none)."""
        conc = self.conc
        j = min(int(now), len(conc) - 1)
        for s in range(self._seen + 1, j + 1):
            scraped = ready_since is not None and ready_since < s + 1
            if scraped or conc[s] > 0 or (s > 0 and conc[s - 1] > 0):
                self.stable.write(s)
                self.panic.write(s)
        self._seen = j - 1
        return self.stable.average(conc, now), self.panic.average(conc, now)


class Decider:
    """autoscaler.go Scale: ceil(observed / (target x utilisation)) replicas, bounded by the scale-up and
    scale-down rates of the ready replicas (at least one); panic when the panic window asks for the
    panic threshold times the ready replicas, and while panicking never ask for fewer than asked for
    since, until a stable window passes without crossing the threshold."""

    def __init__(self, kpa: KPA) -> None:
        self.kpa = kpa
        self.panic_since: float | None = None  # the last tick over the panic threshold, while panicking
        self.max_panic = 0

    def desired(self, now: float, stable: float, panic: float, ready: int) -> int:
        k = self.kpa
        ready1 = max(1, ready)  # readyPodsCount is at least 1: buffered requests with nothing ready panic
        per = k.target * k.target_utilization
        up, down = math.ceil(k.max_scale_up_rate * ready1), math.floor(ready1 / k.max_scale_down_rate)
        dspc, dppc = math.ceil(stable / per - 1e-9), math.ceil(panic / per - 1e-9)
        want_stable, want_panic = min(max(dspc, down), up), min(max(dppc, down), up)
        if dppc / ready1 >= k.panic_threshold_percentage / 100:
            self.panic_since = now
        elif self.panic_since is not None and now - self.panic_since > k.stable_window_s:
            self.panic_since, self.max_panic = None, 0
        if self.panic_since is None:
            return want_stable
        self.max_panic = max(self.max_panic, want_stable, want_panic)
        return self.max_panic


class Scaler:
    """scaler.go applied to the decider's scale: min and max; while activating (no replica ready since
    zero) the scale stays; to zero only once the PodAutoscaler has been active (a replica ready) for a
    stable window, keeping one replica until then; then, inactive, after the retention period and either
    the grace period or as long in the activator's path already (with the default TBC the activator never
    left it, so the grace period is no wait)."""

    def __init__(self, kpa: KPA, min_scale: int, max_scale: int) -> None:
        self.kpa, self.min_scale, self.max_scale = kpa, min_scale, max_scale
        # A service that starts at zero, or with too little room for the burst capacity, has been in the
        # activator's path for long.
        proxied = self.in_path(min_scale, min_scale, 0.0)
        # Active since: a replica ready since the last time at zero or marked inactive (None: activating,
        # or at zero). Warm replicas at the start have been for long.
        self.active_since: float | None = -math.inf if min_scale else None
        self.inactive_since: float | None = None
        self.proxy_since: float | None = -math.inf if proxied else None

    def in_path(self, want: int, ready: int, panic: float) -> bool:
        """The activator stays in the path (the SKS in proxy mode) at zero and while the excess burst
        capacity, floor(ready x target - TBC - panic concurrency), is negative; with TBC -1 always."""
        tbc = self.kpa.target_burst_capacity
        return tbc < 0 or want == 0 or (tbc > 0 and math.floor(ready * self.kpa.target - tbc - panic) < 0)

    def scale(
        self,
        now: float,
        want: int,
        have: int,
        ready: int,
        first_ready: float | None,
        stable: float,
        panic: float,
        floor: int = 0,
    ) -> int:
        """The replica count to apply, given the decider's `want`, the `have` replicas, the `ready` ones and
        the earliest one's ready time (None: none is ready), and the stable and panic concurrency. `floor`
        is a minimum for now only (the warm policy's, as a Revision's min-scale annotation moved)."""
        k = self.kpa
        want = min(self.max_scale, max(self.min_scale, floor, want))
        if not self.in_path(want, ready, panic):
            self.proxy_since = None
        elif self.proxy_since is None:
            self.proxy_since = now
        if self.active_since is None and first_ready is not None:
            # kpa.go computeActiveCondition: active once a replica is ready (the reconciler hears of it as
            # it happens, not at a tick).
            self.active_since = first_ready
        if stable > 0 or want > 0 or self.min_scale > 0:
            if self.inactive_since is not None and first_ready is not None:
                self.active_since = now  # marked inactive, then traffic again: active anew
            self.inactive_since = None
        if want == 0 and have > 0:
            if stable > 0 or self.active_since is None:
                return have  # activating: scaler.go keeps the scale as it is
            if now - self.active_since < k.stable_window_s:
                # handleScaleToZero: not active a stable window yet; "scale down to at most 1 for the
                # remainder of the idle period".
                return 1
            if self.inactive_since is None:
                self.inactive_since = now
            idle = now - self.inactive_since
            grace = k.scale_to_zero_grace_s
            proxied = self.proxy_since is not None and now - self.proxy_since >= grace
            if idle < k.retention_s or (idle < grace and not proxied):
                return have
        if want == 0:
            self.active_since = None
        return want
