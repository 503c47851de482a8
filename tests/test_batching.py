"""The batcher in-process, on a real onnxruntime session: parallel inferences overlap on the one session,
a single inference thread never does, and every caller gets its own rows either way."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from runtimeproc import linear_model
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
