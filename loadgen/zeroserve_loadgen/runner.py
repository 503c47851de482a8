"""Runs a plan with locust as a library: locally in this process, or as a locust master whose workers each
send every n-th arrival of the same schedule.

Sending is open-loop: up to `max_in_flight` requests are out at once, each sent at its arrival's time,
so a slow target does not slow the arrivals down. How late each
send left (scheduled vs sent) is recorded, so a saturated load generator shows up in the report instead of
hiding as lower latency.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
from locust import User, task
from locust.env import Environment

from zeroserve_loadgen.clients import Outcome, make_sender
from zeroserve_loadgen.plan import RunPlan, Sample, Schedule, schedule
from zeroserve_loadgen.targets import Target

log = logging.getLogger("zeroserve.loadgen")

PLAN, SAMPLES, DONE = "zeroserve_plan", "zeroserve_samples", "zeroserve_done"
FLUSH_EVERY_S = 0.5


class LoadgenError(RuntimeError):
    """The run could not take place (no workers, no reachable target); the message says why."""


@dataclass
class WorkerState:
    """What a dispatcher needs; the master fills it in over a locust message on distributed runs."""

    plan: RunPlan | None = None
    index: int = 0
    count: int = 1
    start_at: float = 0.0
    ready: gevent.event.Event = field(default_factory=gevent.event.Event)
    sink: list[Any] = field(default_factory=list)
    finished: gevent.event.Event = field(default_factory=gevent.event.Event)
    started: bool = False
    error: str | None = None


def dispatch(state: WorkerState, request_event: Any) -> None:
    """Each target gets its own `max_in_flight` sender greenlets sharing one iterator over its arrivals:
    a sender takes the next arrival, waits for its time, sends, records, and takes the next. A slow
    target therefore never holds back another target's sends. Within a target, arrivals keep their
    schedule whatever its pace as long as a sender is free; when none is, the send leaves late and the
    lag is recorded. No greenlet is created per request, which keeps a saturated run as cheap per
    request as a bare locust user."""
    plan = state.plan
    assert plan is not None
    mine: Schedule = schedule(plan).slice(state.index, state.count)
    senders = [make_sender(t, plan.payload, request_event, plan.max_in_flight) for t in plan.targets]
    start_at, sink = state.start_at, state.sink
    now = time.time

    def sender_loop(k: int, arrivals: Iterator[float]) -> None:
        send = senders[k].send
        for due in arrivals:  # shared by this target's senders: each arrival goes to exactly one
            delay = start_at + due - now()
            # The event loop's timers are no finer than about a millisecond: sleeping for less only
            # costs a loop iteration per arrival at high rates, for no gain in timing.
            if delay > 0.0005:
                gevent.sleep(delay)
            sent = now() - start_at
            try:
                o = send()
            except Exception as e:  # a bug or a broken client must cost one sample, never the run
                log.exception("sending to %s failed", plan.targets[k].name)
                o = Outcome(
                    0, False, now() - start_at - sent, False, -1.0, -1.0, -1.0, f"{type(e).__name__}: {e}"
                )
            sink.append(
                (
                    k,
                    due,
                    sent,
                    o.latency_s,
                    o.status,
                    o.ok,
                    o.cold,
                    o.server_s,
                    o.init_s,
                    o.ready_age_s,
                    o.error,
                    o.replica,
                    o.revision,
                )
            )

    group = gevent.pool.Group()
    try:
        for k in range(len(plan.targets)):
            times = mine.times[mine.targets == k].tolist()
            arrivals = iter(times)
            for _ in range(min(plan.max_in_flight, len(times))):
                group.spawn(sender_loop, k, arrivals)
        group.join()
    finally:
        group.kill()  # only ever has work left when the run is being stopped


class Dispatcher(User):
    """One per worker process. Its single task sends this worker's share of the schedule, once."""

    # Not picked up by locust's own file discovery; zeroserve passes it explicitly.
    abstract = False
    host = "http://unused"

    @task
    def send_schedule(self) -> None:
        state: WorkerState = self.environment.zeroserve  # type: ignore[attr-defined]
        if not state.started:
            state.started = True
            try:
                if not state.ready.wait(timeout=120):
                    raise LoadgenError("no plan arrived from the master within 120 s")
                dispatch(state, self.environment.events.request)
            except Exception as e:
                # Reported to whoever runs the bench (over a message from a remote worker); the run
                # ends with what was measured instead of a traceback in a log nobody reads.
                log.exception("the dispatcher failed")
                state.error = f"{type(e).__name__}: {e}"
            finally:
                state.finished.set()
        gevent.sleep(10**9)  # stay until the master stops the run; the task must not start over


def _environment(state: WorkerState) -> Environment:
    env = Environment(user_classes=[Dispatcher], events=None)
    env.zeroserve = state  # type: ignore[attr-defined]
    return env


def preflight(targets: list[Target], timeout_s: float = 3.0) -> dict[str, str]:
    """Targets that do not accept a TCP connection, with the reason. A connect costs no invocation on a
    managed function, so this is safe to do before a run that measures cold starts."""
    problems: dict[str, str] = {}
    for t in targets:
        if t.kind == "oip-grpc":
            host, _, port = t.grpc_address().rpartition(":")
            address = (host.strip("[]"), int(port) if port.isdigit() else 0)
        else:
            parts = urlsplit(t.url)
            address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        try:
            socket.create_connection(address, timeout=timeout_s).close()
        except OSError as e:
            problems[t.name] = f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}"
    return problems


Progress = Callable[[list[Any], float], None]


def _samples(rows: list[Any]) -> list[Sample]:
    return [Sample(*row) for row in rows]


@dataclass
class RunOutcome:
    samples: list[Sample]
    errors: list[str]  # why part of the run did not happen; empty when all of it did
    workers: int = 1
    start_at: float = 0.0  # wall-clock time of the run's t = 0


def run_local(plan: RunPlan, progress: Progress | None = None) -> RunOutcome:
    """Everything in this process: one dispatcher, samples straight into a list."""
    state = WorkerState(plan=plan, start_at=time.time() + 0.2)
    state.ready.set()
    env = _environment(state)
    runner = env.create_local_runner()
    runner.start(1, spawn_rate=1)
    try:
        stuck = _wait(state.finished, plan, state.start_at, lambda: state.sink, progress)
    finally:
        runner.quit()
    errors = [e for e in (state.error, stuck) if e]
    return RunOutcome(_samples(state.sink), errors, start_at=state.start_at)


def _wait(
    done: gevent.event.Event,
    plan: RunPlan,
    start_at: float,
    rows: Callable[[], list[Any]],
    progress: Progress | None,
) -> str | None:
    """Wait for the run to finish; the reason when it got stuck instead. A saturated generator runs
    past the schedule, which is allowed; a run is stuck only when no answer at all came back for
    longer than any request may take. What was measured until then is kept."""
    patience = max(t.timeout_s for t in plan.targets) + 30
    seen, last_progress = 0, time.time()
    while not done.wait(timeout=0.25):
        if progress:
            progress(rows(), time.time() - start_at)
        now = time.time()
        if len(rows()) != seen or now < start_at + plan.total_duration():
            seen, last_progress = len(rows()), now
        elif now - last_progress > patience:
            return f"the run was stopped: no request finished in {patience:.0f} s"
    if progress:
        progress(rows(), time.time() - start_at)
    return None


def run_master(
    plan: RunPlan,
    workers: int,
    bind_host: str = "127.0.0.1",
    bind_port: int = 5557,
    spawn_local: bool = True,
    progress: Progress | None = None,
    connect_timeout_s: float = 60.0,
) -> RunOutcome:
    """A locust master with at least `workers` workers, started here as local processes or joined from
    elsewhere with `zeroserve bench-worker --master-host ...`. Every worker connected when the run
    starts gets a share of the schedule, since locust spreads users over all of them."""
    state = WorkerState(plan=plan)
    env = _environment(state)
    runner = env.create_master_runner(master_bind_host=bind_host, master_bind_port=bind_port)
    rows: list[Any] = []
    finished: set[str] = set()
    errors: list[str] = []
    all_done = gevent.event.Event()
    count = workers

    def on_samples(msg: Any, **_: Any) -> None:
        rows.extend(msg.data)

    def on_done(msg: Any, **_: Any) -> None:
        if msg.data and msg.data.get("error"):
            errors.append(f"worker {msg.node_id}: {msg.data['error']}")
        finished.add(msg.node_id)
        if len(finished) >= count:
            all_done.set()

    runner.register_message(SAMPLES, on_samples)
    runner.register_message(DONE, on_done)
    procs = [_spawn_worker(bind_port) for _ in range(workers)] if spawn_local else []
    try:
        deadline = time.time() + connect_timeout_s
        while len(runner.clients.ready) < workers:
            if time.time() > deadline:
                raise LoadgenError(
                    f"only {len(runner.clients.ready)} of {workers} workers connected to the master "
                    f"on {bind_host}:{bind_port} within {connect_timeout_s:.0f} s"
                )
            for p in procs:
                if p.poll() is not None:
                    raise LoadgenError(f"a local worker exited with status {p.returncode} before the run")
            gevent.sleep(0.1)
        nodes = list(runner.clients.ready)
        count = len(nodes)
        start_at = time.time() + 1.0
        for index, node in enumerate(nodes):
            data = {
                "plan": plan.model_dump(mode="json"),
                "index": index,
                "count": count,
                "start_at": start_at,
            }
            runner.send_message(PLAN, data, client_id=node.id)
        runner.start(count, spawn_rate=count)
        stuck = _wait(all_done, plan, start_at, lambda: rows, progress)
        if stuck:
            errors.append(stuck)
        gevent.sleep(FLUSH_EVERY_S * 2)  # the last flushes travel behind the done messages
    finally:
        runner.quit()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return RunOutcome(_samples(rows), errors, workers=count, start_at=start_at)


def _spawn_worker(master_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zeroserve_loadgen.worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(master_port),
        ],
        stdin=subprocess.DEVNULL,
    )


def run_worker(master_host: str, master_port: int) -> int:
    """A locust worker: waits for its share of the plan, sends it, streams samples back to the master."""
    state = WorkerState()
    env = _environment(state)
    runner = env.create_worker_runner(master_host, master_port)

    def on_plan(msg: Any, **_: Any) -> None:
        state.plan = RunPlan.model_validate(msg.data["plan"])
        state.index, state.count = msg.data["index"], msg.data["count"]
        state.start_at = msg.data["start_at"]
        state.ready.set()

    def flush_forever() -> None:
        while True:
            finished = state.finished.wait(timeout=FLUSH_EVERY_S)
            if state.sink:
                batch, state.sink[:] = list(state.sink), []
                runner.send_message(SAMPLES, batch)
            if finished:
                runner.send_message(DONE, {"error": state.error})
                return

    runner.register_message(PLAN, on_plan)
    gevent.spawn(flush_forever)
    runner.greenlet.join()
    return 0
