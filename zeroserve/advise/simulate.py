"""A discrete-event simulation of one arrival sequence through each platform's scaling.

Every replica (a Knative pod, a Cloud Run instance, a server) is a single FIFO server: the runtime runs
one inference at a time by default (parallelInferences 1) and the function handler holds a lock around
its session, so requests on one replica wait their turn. A request's completion is therefore known when
it is routed, which keeps the simulation to one pass over the arrivals plus the autoscaler's ticks.
Service times are drawn from the profile with common random numbers: one uniform per request, shared by
every configuration, so configurations are compared on the same luck.

Routing is to the replica with the least outstanding work (its busy-until time): an idealised load
balancer, as Knative's activator with containerConcurrency and Cloud Run's router approximate.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from zeroserve.advise.kpa import KPA, Collector, Decider, Scaler
from zeroserve.warm import WarmPolicy

__all__ = ["KPA", "SimResult", "averaged", "draw", "simulate_cloud_run", "simulate_lambda", "simulate_pool"]


@dataclass
class SimResult:
    latency_s: np.ndarray  # client side, failures included (their time to failure)
    ok: np.ndarray
    cold: np.ndarray  # waited for a cold start
    wall_s: float
    starts: float = 0  # replicas / environments started during the run
    # Pool (Knative): replicas whose first answer a client received went to a request that waited for the
    # start (or came within cold_ready_age_s of it). A runtime flags one cold-start answer per process,
    # so this, not `cold` (every request that waited), is what a measured run's cold-start count
    # compares with.
    cold_starts: float = 0
    # The arrival time of each request counted in cold_starts, per run pooled here: where a measured
    # run's cold starts differ, these say which bursts.
    cold_start_at: list[list[float]] = field(default_factory=list)
    max_replicas: int = 0
    replica_seconds: float = 0.0  # Knative and always-on: replicas existing, starting and Pending included
    pending_s: float = 0.0  # Knative: the part of replica_seconds spent Pending, waiting for a node's room
    busy_s: float = 0.0  # Cloud Run: instance time with a request in it
    idle_min_s: float = 0.0  # Cloud Run: min instances' idle time
    billed_s: np.ndarray | None = None  # Lambda: per request duration
    init_s: np.ndarray | None = None  # Lambda: billed INIT (the whole Init Duration) per request
    on_provisioned: np.ndarray | None = None
    throttled: np.ndarray | None = None  # Lambda: refused at the concurrency limit, never invoked
    replicas: list[tuple[float, int]] = field(default_factory=list)  # (t, count) at each change
    prewarms: float = 0  # Knative with a warm policy: starts from zero it asked for, no request waiting
    prewarms_wasted: float = 0  # ... of which went to zero again without a request
    runs: int = 1  # runs of the same arrivals pooled here (averaged()): the arrays hold each run's requests

    @property
    def successes(self) -> float:
        return float(self.ok.sum()) / self.runs

    @property
    def scheduled_replica_seconds(self) -> float:
        """Replica-seconds on a node, as a bench counts them and a cluster bills them: a Pending replica
        holds no node's CPU."""
        return self.replica_seconds - self.pending_s

    @property
    def cold_requests(self) -> float:
        return float(self.cold.sum()) / self.runs

    def percentiles_ms(self) -> tuple[float, float]:
        good = self.latency_s[self.ok]
        if good.size == 0:
            return math.inf, math.inf
        p50, p99 = np.percentile(good, [50, 99])
        return float(p50) * 1000, float(p99) * 1000


def averaged(runs: list[SimResult]) -> SimResult:
    """Runs of the same arrivals pooled into one result: every request of every run in the latency
    distribution (so percentiles and shares are the runs' mixture), counts and seconds averaged, the peak
    the highest; the replica trace is the first run's."""
    first = runs[0]
    if len(runs) == 1:
        return first
    mean = lambda get: sum(get(r) for r in runs) / len(runs)  # noqa: E731
    return SimResult(
        np.concatenate([r.latency_s for r in runs]),
        np.concatenate([r.ok for r in runs]),
        np.concatenate([r.cold for r in runs]),
        max(r.wall_s for r in runs),
        starts=mean(lambda r: r.starts),
        cold_starts=mean(lambda r: r.cold_starts),
        cold_start_at=[at for r in runs for at in r.cold_start_at],
        max_replicas=max(r.max_replicas for r in runs),
        replica_seconds=mean(lambda r: r.replica_seconds),
        pending_s=mean(lambda r: r.pending_s),
        replicas=first.replicas,
        prewarms=mean(lambda r: r.prewarms),
        prewarms_wasted=mean(lambda r: r.prewarms_wasted),
        runs=len(runs),
    )


def draw(samples: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Service times for each request: the profile's empirical distribution at the quantile `u`."""
    s = np.sort(np.asarray(samples, dtype=float))
    return s[np.minimum((u * len(s)).astype(np.int64), len(s) - 1)]


def _finish(
    arr: np.ndarray, comp: list[float], cold: list[bool], overhead_s: float, timeout_s: float, wall: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    latency = np.asarray(comp) - arr + overhead_s
    ok = latency <= timeout_s
    latency = np.minimum(latency, timeout_s)
    wall = max(wall, float(np.max(arr + latency)) if len(arr) else wall)
    return latency, ok, np.asarray(cold, dtype=bool), wall


def simulate_lambda(
    arr: np.ndarray,
    svc: np.ndarray,
    init_s: float,
    platform_init_s: float,
    overhead_s: float,
    provisioned: int,
    reclaim_s: float,
    limit: int,
    timeout_s: float,
    wall_s: float,
) -> SimResult:
    """One request per execution environment. Provisioned environments (initialised before the run,
    never reclaimed) take a request first; otherwise the most recently freed warm environment, else a new
    one: a cold start of the platform's own start plus the handler's measured init. An environment idle
    longer than `reclaim_s` is gone; beyond the concurrency limit a request is throttled (fails).

    The cold start's whole INIT phase, `platform_init_s` and `init_s` together (CloudWatch's Init
    Duration), is billed: AWS bills on-demand functions' INIT phase since 2025-08-01 ("AWS Lambda
    standardizes billing for INIT Phase", AWS Compute Blog, 2025-04-29)."""
    n = len(arr)
    t_list, s_list = arr.tolist(), svc.tolist()
    comp = [0.0] * n
    cold = [False] * n
    ok_throttle = [True] * n
    billed_init = [0.0] * n
    on_pc = [False] * n
    pc_free = [0.0] * provisioned
    busy: list[float] = []
    idle: deque[float] = deque()
    starts = peak = 0
    push, pop, replace = heapq.heappush, heapq.heappop, heapq.heapreplace
    cold_total = init_s + platform_init_s
    for i in range(n):
        t, s = t_list[i], s_list[i]
        if provisioned and pc_free[0] <= t:
            replace(pc_free, t + s)
            comp[i] = t + s
            on_pc[i] = True
            continue
        while busy and busy[0] <= t:
            idle.append(pop(busy))
        cutoff = t - reclaim_s
        while idle and idle[0] < cutoff:
            idle.popleft()
        if idle:
            idle.pop()
            end = t + s
        else:
            if len(busy) + provisioned >= limit:
                ok_throttle[i] = False
                comp[i] = t
                continue
            end = t + cold_total + s
            cold[i] = True
            billed_init[i] = cold_total
            starts += 1
        push(busy, end)
        comp[i] = end
        if len(busy) + len(idle) > peak:
            peak = len(busy) + len(idle)
    latency, ok, cold_a, wall = _finish(arr, comp, cold, overhead_s, timeout_s, wall_s)
    ok &= np.asarray(ok_throttle)
    return SimResult(
        latency,
        ok,
        cold_a,
        wall,
        starts=starts,
        max_replicas=peak + provisioned,
        billed_s=svc.copy(),
        init_s=np.asarray(billed_init),
        on_provisioned=np.asarray(on_pc, dtype=bool),
        throttled=~np.asarray(ok_throttle, dtype=bool),
    )


def simulate_cloud_run(
    arr: np.ndarray,
    svc: np.ndarray,
    cold_s: float,
    overhead_s: float,
    concurrency: int,
    min_instances: int,
    max_instances: int,
    retention_s: float,
    pending_timeout_s: float,
    timeout_s: float,
    wall_s: float,
) -> SimResult:
    """Requests share an instance up to `concurrency`, queued inside it (one inference at a time). With
    every instance full a new one starts (the request waits for it), up to `max_instances`; beyond that
    the request waits for the least busy instance and fails after `pending_timeout_s`. An instance idle
    longer than `retention_s` is gone, except the min instances, which start warm and stay."""
    n = len(arr)
    t_list, s_list = arr.tolist(), svc.tolist()
    comp = [0.0] * n
    cold = [False] * n
    failed = [False] * n
    bu = [0.0] * min_instances  # busy until
    caps: list[deque[float]] = [deque(maxlen=concurrency) for _ in range(min_instances)]
    cov = [0.0] * min_instances  # end of billed time so far
    busy_each = [0.0] * min_instances
    permanent = [True] * min_instances
    busy_gone = 0.0
    starts = 0
    peak = min_instances
    replicas = [(0.0, min_instances)]
    next_sweep = 0.0
    for i in range(n):
        t, s = t_list[i], s_list[i]
        if t >= next_sweep:
            next_sweep = t + 1.0
            cutoff = t - retention_s
            gone = [k for k in range(len(bu)) if not permanent[k] and bu[k] < cutoff]
            if gone:
                for k in reversed(gone):
                    busy_gone += busy_each[k]
                    for lst in (bu, caps, cov, busy_each, permanent):
                        del lst[k]
                replicas.append((t, len(bu)))
        k = min(range(len(bu)), key=bu.__getitem__) if bu else -1
        full = k < 0 or (len(caps[k]) == concurrency and caps[k][0] > t)
        if full and len(bu) < max_instances:
            ready = t + cold_s
            bu.append(ready)
            caps.append(deque(maxlen=concurrency))
            cov.append(t)
            busy_each.append(0.0)
            permanent.append(False)
            k = len(bu) - 1
            cold[i] = True
            starts += 1
            peak = max(peak, len(bu))
            replicas.append((t, len(bu)))
        start = bu[k] if bu[k] > t else t
        if full and not cold[i] and start - t > pending_timeout_s:
            failed[i] = True
            comp[i] = t + pending_timeout_s
            continue
        end = start + s
        bu[k] = end
        caps[k].append(end)
        # Request-based billing: the instance is billed while it holds at least one request.
        busy_each[k] += end - (t if t >= cov[k] else cov[k]) if end > cov[k] else 0.0
        cov[k] = max(cov[k], end)
        comp[i] = end
    latency, ok, cold_a, wall = _finish(arr, comp, cold, overhead_s, timeout_s, wall_s)
    ok &= ~np.asarray(failed, dtype=bool)
    busy_s = busy_gone + sum(busy_each)
    idle_min = sum(max(0.0, wall - b) for b, p in zip(busy_each, permanent, strict=True) if p)
    return SimResult(
        latency,
        ok,
        cold_a,
        wall,
        starts=starts,
        max_replicas=peak,
        busy_s=busy_s,
        idle_min_s=idle_min,
        replicas=replicas,
    )


def simulate_pool(
    arr: np.ndarray,
    svc: np.ndarray,
    cold_s: float,
    overhead_s: float,
    timeout_s: float,
    wall_s: float,
    min_scale: int,
    max_scale: int,
    kpa: KPA | None = None,
    container_concurrency: int = 0,
    max_batch: int = 1,
    batch_ratio: list[float] | None = None,
    capacity: int | None = None,
    drain_s: float = 0.0,
    parallel: int = 1,
    parallel_ratio: list[float] | None = None,
    cold_ready_age_s: float = 2.0,
    warm: WarmPolicy | None = None,
) -> SimResult:
    """Replicas behind a load balancer: Knative (with `kpa`) or always-on servers (`kpa` None, `min_scale`
    replicas for the whole run). Starts with `min_scale` warm replicas.

    Knative: with no replica at all, the activator buffers the request and starts one at once; every
    `tick_s` the KPA (zeroserve.advise.kpa: the collector's windows, the decider, the scaler) turns the
    in-flight requests, the activator's and the pods', into a replica count, and this pool starts or
    removes replicas to meet it. A new replica serves `cold_s` (pod start plus the runtime's measured cold
    start) after it gets a slot; requests routed to it wait for that.

    Node capacity (`capacity`: how many replicas the nodes fit; None: as many as asked for): a replica
    beyond it waits Pending for a slot, and still counts as a replica, as the pods it stands for do. A
    replica told to go holds its slot `drain_s` longer (Knative's queue-proxy drains before the pod
    goes), so a start soon after scale to zero on a full node waits for that. Scale-down takes Pending
    replicas first, then starting ones, as a ReplicaSet does.

    Batching (`max_batch` > 1): a request that finds its replica busy joins the batch waiting to run next
    if it has room, as the runtime's batcher takes everything queued when it is free; a batch of b runs
    `batch_ratio[b]` times as long as one request.

    Warm policy (`warm`, Knative only): it learns the idle spells from the requests as they come and, at
    each tick, may ask for a replica to be held (a floor under the KPA's scale): a start it causes at zero
    is a pre-warm, used when a request comes while it lives, wasted when it goes without one.

    Parallel inferences (`parallel` > 1, without batching): a replica runs up to that many requests at
    once, each in the first slot to come free; one that starts while c - 1 others run takes
    `parallel_ratio[c]` times as long as alone, as they share the replica's CPUs."""
    n = len(arr)
    t_list, s_list = arr.tolist(), svc.tolist()
    comp = [0.0] * n
    cold = [False] * n
    inf = math.inf
    ratio = batch_ratio or [1.0, 1.0]
    bmax = max(1, min(max_batch, container_concurrency or max_batch, len(ratio) - 1))
    # Per replica, in creation order: busy until, ready at, created at, when it got a slot (inf: Pending
    # with no slot in sight), and the last batch (start, size, base, members).
    bu = [0.0] * min_scale  # the first of its parallel slots to come free
    slots: list[list[float]] = [[0.0] * parallel for _ in range(min_scale)]  # heaps of busy-until
    pratio = parallel_ratio or [1.0] * (parallel + 1)
    ready_at = [0.0] * min_scale
    created = [0.0] * min_scale
    slot_at = [0.0] * min_scale
    lb_start = [-1.0] * min_scale
    lb_size = [0] * min_scale
    lb_base = [0.0] * min_scale
    lb_members: list[list[int]] = [[] for _ in range(min_scale)]
    answered = [True] * min_scale  # the replica has given an answer its client received (warm ones: moot)
    per_replica = (bu, slots, ready_at, created, slot_at, lb_start, lb_size, lb_base, lb_members, answered)
    slots_free = inf if capacity is None else capacity - min_scale
    releases: list[float] = []  # when draining replicas' slots come free, none yet claimed
    replica_seconds = pending_s = 0.0
    starts = 0
    peak = min_scale
    replicas = [(0.0, min_scale)]
    horizon = int(wall_s + timeout_s + cold_s + drain_s) + 8
    metrics = Collector(horizon, kpa) if kpa else None

    def give_slot(k: int, at: float) -> None:
        slot_at[k] = at
        ready_at[k] = bu[k] = at + cold_s
        slots[k] = [at + cold_s] * parallel

    def start_replica(now: float) -> None:
        nonlocal starts, peak, slots_free
        for lst, v in zip(
            per_replica, (inf, [inf] * parallel, inf, now, inf, -1.0, 0, 0.0, [], False), strict=True
        ):
            lst.append(v)  # type: ignore[attr-defined]
        if slots_free > 0:
            slots_free -= 1
            give_slot(len(bu) - 1, now)
        elif releases:
            give_slot(len(bu) - 1, max(now, heapq.heappop(releases)))
        starts += 1
        peak = max(peak, len(bu))

    def hand_over(at: float) -> None:
        """A slot comes free at `at`: the oldest replica without one takes it."""
        for j, s in enumerate(slot_at):
            if s == inf:
                give_slot(j, at)
                return
        heapq.heappush(releases, at)

    def remove(k: int, now: float) -> None:
        nonlocal replica_seconds, pending_s
        got = slot_at[k]
        # A replica told to go finishes what it holds first (Knative drains it).
        replica_seconds += (max(now, max(slots[k])) if got <= now else now) - created[k]
        pending_s += min(now, got) - created[k]
        for lst in per_replica:
            del lst[k]  # type: ignore[attr-defined]
        if got <= now:
            hand_over(now + drain_s)
        elif got < inf:
            hand_over(got)

    cold_at: list[float] = []
    prewarms = prewarms_wasted = 0
    prewarmed = False  # a pre-warmed replica is up and no request has come since
    decider = Decider(kpa) if kpa else None
    scaler = Scaler(kpa, min_scale, max_scale) if kpa else None
    next_tick = kpa.tick_s + kpa.tick_phase_s if kpa else inf

    def tick(now: float) -> None:
        nonlocal prewarms, prewarms_wasted, prewarmed
        assert metrics is not None and decider is not None and scaler is not None
        ready_times = [r for r in ready_at if r <= now]
        first_ready = min(ready_times) if ready_times else None
        stable, panic = metrics.observe(now, first_ready)
        ready = len(ready_times)
        want = decider.desired(now, stable, panic, ready)
        have = len(bu)
        floor = warm.warm(now) if warm else 0
        want = scaler.scale(now, want, have, ready, first_ready, stable, panic, floor)
        if have == 0 and want > 0:
            prewarms += 1
            prewarmed = True
        elif want == 0 and have > 0 and prewarmed:
            prewarms_wasted += 1
            prewarmed = False
        if want > have:
            for _ in range(want - have):
                start_replica(now)
            replicas.append((now, len(bu)))
        elif want < have:
            # As a ReplicaSet scales down: Pending first, then starting, then the least busy ready ones.
            def rank(k: int) -> tuple[int, float]:
                stage = 0 if slot_at[k] > now else 1 if ready_at[k] > now else 2
                return stage, bu[k]

            for k in sorted(sorted(range(have), key=rank)[: have - want], reverse=True):
                remove(k, now)
            replicas.append((now, len(bu)))

    for i in range(n):
        t, s = t_list[i], s_list[i]
        while next_tick <= t:
            tick(next_tick)
            next_tick += kpa.tick_s if kpa else inf
        prewarmed = False
        if not bu:
            start_replica(t)  # the activator's poke
            replicas.append((t, len(bu)))
        # Pending replicas with no slot in sight have bu inf; one with a slot exists while any replica does.
        k = min(range(len(bu)), key=bu.__getitem__)
        if ready_at[k] > t and container_concurrency == 0:
            # Without containerConcurrency the activator leaves the path once a replica is ready, and
            # requests queue at ready replicas rather than wait for a starting one.
            ready = [j for j in range(len(bu)) if ready_at[j] <= t]
            if ready:
                k = min(ready, key=bu.__getitem__)
        if bmax > 1 and lb_start[k] > t and lb_size[k] < bmax:
            old_end = bu[k]
            size = lb_size[k] + 1
            end = lb_start[k] + lb_base[k] * ratio[size]
            for m in lb_members[k]:
                comp[m] = end
            if metrics:
                metrics.add(old_end, min(end, t + timeout_s), size - 1)
            lb_size[k] = size
            lb_members[k].append(i)
        elif parallel > 1:
            mine = slots[k]
            start = max(t, heapq.heappop(mine))
            running = sum(1 for b in mine if b > start)
            end = start + s * pratio[running + 1]
            heapq.heappush(mine, end)
            lb_start[k] = -1.0
        else:
            start = bu[k] if bu[k] > t else t
            end = start + s
            lb_start[k], lb_size[k], lb_base[k], lb_members[k] = start, 1, s, [i]
        if parallel > 1:
            bu[k] = slots[k][0]
        else:
            bu[k] = slots[k][0] = end
        comp[i] = end
        if warm:
            warm.request(t, end)
        cold[i] = ready_at[k] > t
        if not answered[k] and end - t + overhead_s <= timeout_s:
            # The runtime flags its process's first answer; a client that gave up never sees it (the
            # activator drops a request whose client has gone, so the first answer goes to the first one
            # still waiting). A bench counts the flag when the request came at most cold_ready_age_s
            # after the replica was ready: it waited for the start.
            answered[k] = True
            if t <= ready_at[k] + cold_ready_age_s:
                cold_at.append(t)
        if metrics:
            # A client gives up at its timeout and the proxies stop counting the request then; it also
            # bounds the work per request when a configuration is overloaded.
            metrics.add(t, min(end, t + timeout_s))
    end_t = max([wall_s, *(max(m) for m in slots if max(m) < inf)])
    while kpa and next_tick <= wall_s:
        tick(next_tick)
        next_tick += kpa.tick_s
    for k in range(len(bu) - 1, -1, -1):
        got = slot_at[k]
        replica_seconds += (max(end_t, max(slots[k])) if got < inf else end_t) - created[k]
        pending_s += min(end_t, got) - created[k]
    latency, ok, cold_a, wall = _finish(arr, comp, cold, overhead_s, timeout_s, wall_s)
    return SimResult(
        latency,
        ok,
        cold_a,
        wall,
        starts=starts,
        cold_starts=len(cold_at),
        cold_start_at=[cold_at],
        max_replicas=peak,
        replica_seconds=replica_seconds,
        pending_s=pending_s,
        replicas=replicas,
        prewarms=prewarms,
        prewarms_wasted=prewarms_wasted,
    )
