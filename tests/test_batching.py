"""The batcher in-process, on a real onnxruntime session: parallel inferences overlap on the one session,
a single inference thread never does, and every caller gets its own rows either way."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from runtimeproc import linear_model
from zeroserve_runtime import batching
from zeroserve_runtime.batching import Admission, Batcher
from zeroserve_runtime.errors import ServerBusy
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.model import OnnxModel


class RecordingModel(OnnxModel):
    """The real model, with each run held at a barrier: runs that overlap meet there, and the most
    that were ever inside run() at once is recorded."""

    def __init__(self, path: Path, parties: int) -> None:
        super().__init__("linear", path, threads=1)
        self.barrier = threading.Barrier(parties, timeout=1)
        self.lock = threading.Lock()
        self.inside = self.most_inside = 0
        self.met = 0

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.barrier.wait()
            self.met += 1
        except threading.BrokenBarrierError:
            pass  # no other run came: this one goes on alone
        try:
            return super().run(feeds)
        finally:
            with self.lock:
                self.inside -= 1


async def _infer_all(batcher: Batcher, rows: list[np.ndarray]) -> list[list[np.ndarray]]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.infer({"x": r}) for r in rows))
    finally:
        await batcher.stop()


def _serve_rows(batcher: Batcher, path: Path, count: int) -> None:
    """`count` one-row requests queued at once; each caller must get exactly its own row's answer."""
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(count)]
    results = asyncio.run(_infer_all(batcher, rows))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(["y"], {"x": np.concatenate(rows)})[0]
    for i, outputs in enumerate(results):
        np.testing.assert_allclose(outputs[0], expected[i : i + 1], rtol=1e-6)


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_inferences_share_the_session(tmp_path: Path, parallel: int) -> None:
    path = linear_model(tmp_path / "linear.onnx")
    model = RecordingModel(path, parties=2)
    batcher = Batcher(
        model, max_batch_size=1, max_queue_delay_s=0, metrics=RuntimeMetrics(), parallel=parallel
    )

    _serve_rows(batcher, path, 6)

    assert model.most_inside == parallel
    if parallel == 2:
        assert model.met >= 2, "no two runs were ever inside the session together"
    else:
        assert model.met == 0
    assert not any(t.is_alive() for t in batcher._threads), "stop() left an inference thread running"


def test_parallel_batches_still_fill_and_split(tmp_path: Path) -> None:
    """One thread collects at a time, so requests queued together still go out in batches while the
    other thread runs, and each caller gets its own rows back."""
    path = linear_model(tmp_path / "linear.onnx")
    metrics = RuntimeMetrics()
    batcher = Batcher(
        OnnxModel("linear", path, threads=1),
        max_batch_size=8,
        max_queue_delay_s=0.05,
        metrics=metrics,
        parallel=2,
    )

    _serve_rows(batcher, path, 16)

    batches = metrics.registry.get_sample_value("zeroserve_batch_size_count", {"model": "linear"})
    merged = metrics.registry.get_sample_value("zeroserve_batch_size_sum", {"model": "linear"})
    assert merged == 16 and batches is not None and batches <= 4, f"{batches} batches for 16 requests"


def test_with_a_thread_idle_a_batch_takes_only_its_share(tmp_path: Path) -> None:
    """Eight requests queued at once, batches of up to 8, two threads: they split the eight and run side
    by side, rather than one batch holding every request while the other thread waits."""
    path = linear_model(tmp_path / "linear.onnx")
    metrics = RuntimeMetrics()
    model = RecordingModel(path, parties=2)
    batcher = Batcher(model, max_batch_size=8, max_queue_delay_s=0.05, metrics=metrics, parallel=2)

    _serve_rows(batcher, path, 8)

    assert model.met == 2, "the two batches did not run side by side"
    sizes = metrics.registry.get_sample_value("zeroserve_batch_size_count", {"model": "linear"})
    assert sizes == 2, f"{sizes} batches for 8 requests split between 2 threads"


async def test_admission_is_taken_and_given_back_by_acquire_and_release() -> None:
    seen: list[int] = []
    admission = Admission(2, seen.append)
    admission.acquire()
    admission.acquire()
    with pytest.raises(ServerBusy, match="limit of 2 requests"):
        admission.acquire()
    assert not await admission.wait_idle(0.01)
    admission.release()
    admission.acquire()  # the place given back is free again
    admission.release()
    admission.release()
    assert await admission.wait_idle(0.01)
    assert seen == [1, 2, 1, 2, 1, 0]
    # A release without its acquire would let the limit drift upwards unnoticed.
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        admission.release()


class ThreadModel(OnnxModel):
    """The real model, recording the thread each run is in; `gate`, while set, holds every run until it
    is released, and `delay` makes each run last at least that long."""

    def __init__(self, path: Path, delay: float = 0.0) -> None:
        super().__init__("linear", path, threads=1)
        self.threads: list[int] = []
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.threads.append(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the run"
        if self.delay:
            time.sleep(self.delay)
        return super().run(feeds)


def _inlined(metrics: RuntimeMetrics) -> float:
    return metrics.registry.get_sample_value("zeroserve_inline_inferences_total", {"model": "linear"}) or 0


ROW = np.ones((1, 4), dtype=np.float32)


@pytest.fixture
def any_run_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """However slow this machine is today, the linear model's runs count as short."""
    monkeypatch.setattr(batching, "INLINE_MAX_SECONDS", 60.0)


async def _lone_requests(batcher: Batcher, count: int, feeds: dict[str, np.ndarray] | None = None) -> None:
    for _ in range(count):
        outputs = await batcher.infer(feeds or {"x": ROW}, alone=True)
        assert outputs[0].shape == (len((feeds or {"x": ROW})["x"]), 3)


async def test_a_lone_request_on_a_fast_model_runs_in_the_loops_thread(
    tmp_path: Path, any_run_is_short: None
) -> None:
    model = ThreadModel(linear_model(tmp_path / "linear.onnx"))
    metrics = RuntimeMetrics()
    batcher = Batcher(model, max_batch_size=1, max_queue_delay_s=0, metrics=metrics)
    batcher.start()
    try:
        await _lone_requests(batcher, 4)
        # Others in the server: to the inference thread, to overlap with their I/O.
        await batcher.infer({"x": ROW}, alone=False)
    finally:
        await batcher.stop()
    loop = threading.get_ident()
    # The first run is what tells the batcher how long runs take; it goes to the thread.
    assert model.threads[0] != loop
    assert model.threads[1:4] == [loop] * 3
    assert model.threads[4] != loop
    assert _inlined(metrics) == 3
    # Every request is counted in the queue and batch metrics, whichever way it ran.
    assert (
        metrics.registry.get_sample_value("zeroserve_queue_duration_seconds_count", {"model": "linear"}) == 5
    )
    assert metrics.registry.get_sample_value("zeroserve_batch_size_count", {"model": "linear"}) == 5


async def test_long_runs_never_block_the_loop(tmp_path: Path) -> None:
    # Runs of at least 5 ms, past the 1 ms that may block the loop, whatever the machine.
    model = ThreadModel(linear_model(tmp_path / "linear.onnx"), delay=0.005)
    metrics = RuntimeMetrics()
    batcher = Batcher(model, max_batch_size=1, max_queue_delay_s=0, metrics=metrics)
    batcher.start()
    try:
        await _lone_requests(batcher, 3)
    finally:
        await batcher.stop()
    assert threading.get_ident() not in model.threads
    assert _inlined(metrics) == 0


async def test_a_lone_request_much_larger_than_those_learned_from_goes_to_a_thread(
    tmp_path: Path, any_run_is_short: None
) -> None:
    model = ThreadModel(linear_model(tmp_path / "linear.onnx"))
    batcher = Batcher(model, max_batch_size=1, max_queue_delay_s=0, metrics=RuntimeMetrics())
    batcher.start()
    try:
        await _lone_requests(batcher, 2)
        await _lone_requests(batcher, 1, {"x": np.ones((1000, 4), dtype=np.float32)})
    finally:
        await batcher.stop()
    loop = threading.get_ident()
    assert model.threads[1] == loop and model.threads[2] != loop


async def test_with_batching_a_lone_request_still_waits_for_company(
    tmp_path: Path, any_run_is_short: None
) -> None:
    model = ThreadModel(linear_model(tmp_path / "linear.onnx"))
    metrics = RuntimeMetrics()
    batcher = Batcher(model, max_batch_size=8, max_queue_delay_s=0.001, metrics=metrics)
    batcher.start()
    try:
        await _lone_requests(batcher, 3)
    finally:
        await batcher.stop()
    assert threading.get_ident() not in model.threads
    assert _inlined(metrics) == 0


async def test_a_cancelled_request_still_running_keeps_the_next_off_the_loop(
    tmp_path: Path, any_run_is_short: None
) -> None:
    """The caller of a run still going on in the thread went away (admission has let it go): the next
    lone request must wait for the session rather than run beside that run in the loop's thread."""
    model = ThreadModel(linear_model(tmp_path / "linear.onnx"))
    batcher = Batcher(model, max_batch_size=1, max_queue_delay_s=0, metrics=RuntimeMetrics())
    batcher.start()
    try:
        await _lone_requests(batcher, 1)  # learns the run time
        model.gate, model.entered = threading.Event(), threading.Event()
        abandoned = asyncio.ensure_future(batcher.infer({"x": ROW}))
        assert await asyncio.to_thread(model.entered.wait, 10)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        nxt = asyncio.ensure_future(batcher.infer({"x": ROW}, alone=True))
        await asyncio.sleep(0.05)
        assert not nxt.done()
        model.gate.set()
        await nxt
        await _lone_requests(batcher, 1)  # the session is free again: inline
    finally:
        if model.gate is not None:
            model.gate.set()
        await batcher.stop()
    loop = threading.get_ident()
    assert model.threads[2] != loop, "ran in the loop's thread beside the abandoned run"
    assert model.threads[3] == loop


async def test_a_request_over_the_byte_budget_waits_for_room_then_is_refused() -> None:
    """A request that fits the count but not yet the bytes waits for others to finish (its body still
    unread), instead of a 503 while the server is working the budget off; past its wait it is refused."""
    admission = Admission(10, lambda _: None, byte_limit=100)
    admission.acquire(80)
    waiter = asyncio.create_task(admission.acquire_within(50, within=5))
    await asyncio.sleep(0.05)
    assert not waiter.done() and admission.count == 1  # waiting, holding nothing
    admission.release(80)
    await asyncio.wait_for(waiter, 1)
    assert (admission.count, admission.bytes) == (1, 50)

    admission.acquire(40)
    with pytest.raises(ServerBusy, match="over its budget"):
        await admission.acquire_within(50, within=0.1)
    assert (admission.count, admission.bytes) == (2, 90)
