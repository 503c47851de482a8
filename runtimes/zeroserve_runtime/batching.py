"""Admission control and adaptive batching in front of the one onnxruntime session.

Every admitted request goes through one queue. A single runner takes what is waiting, up to
max_batch_size rows (waiting at most max_queue_delay for more), runs it as one session.run in the
inference thread, and hands each caller its own rows. With max_batch_size 1 it runs requests one by one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from zeroserve_runtime.errors import ServerBusy
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.model import OnnxModel


class Admission:
    """At most `limit` requests in the server at once; the next one is refused at the door, so memory
    stays bounded under overload instead of queueing without end."""

    def __init__(self, limit: int, on_change: Callable[[int], None]) -> None:
        self.limit = limit
        self.count = 0
        self._on_change = on_change
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        if self.count >= self.limit:
            raise ServerBusy(f"the server is at its limit of {self.limit} requests in flight; retry later")
        self.count += 1
        self._idle.clear()
        self._on_change(self.count)

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        self._on_change(self.count)
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), within)
            return True
        except TimeoutError:
            return False


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        max_batch_size: int,
        max_queue_delay_s: float,
        metrics: RuntimeMetrics,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size if model.batchable else 1
        self.max_delay = max_queue_delay_s
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: _Item | None = None
        # onnxruntime releases the GIL in run(); one thread keeps runs from competing for the cores that
        # intra-op threads already use.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        first = next(iter(feeds.values()))
        rows = first.shape[0] if first.ndim else 1
        # Only requests whose tensors agree beyond the first dimension can be stacked.
        signature = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(feeds, rows, signature, future))
        return await future

    async def _next(self, within: float | None) -> _Item | None:
        """The held-over item, else the next queued one, waiting at most `within` seconds (None: forever)."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        if within is None:
            return await self._queue.get()
        if within <= 0:
            return self._queue.get_nowait() if not self._queue.empty() else None
        try:
            return await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            return None

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            now = time.perf_counter()
            for item in batch:  # once per request, not again if its batch is rerun
                self.metrics.queue_seconds.labels(self.model.name).observe(now - item.enqueued)
            try:
                await self._execute(batch)
            except Exception as e:  # never lose the runner: fail this batch's callers and go on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)

    async def _collect(self) -> list[_Item]:
        first = await self._next(None)
        assert first is not None
        batch, rows = [first], first.rows
        deadline = time.perf_counter() + self.max_delay
        while rows < self.max_batch_size:
            item = await self._next(deadline - time.perf_counter())
            if item is None:
                break
            if item.signature != first.signature or rows + item.rows > self.max_batch_size:
                self._held = item  # starts the next batch
                break
            batch.append(item)
            rows += item.rows
        return [i for i in batch if not i.future.cancelled()]

    async def _execute(self, batch: list[_Item]) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self.metrics.batch_size.labels(self.model.name).observe(len(batch))
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([i.feeds[name] for i in batch]) for name in batch[0].feeds}
        try:
            outputs = await loop.run_in_executor(self._executor, self.model.run, feeds)
        except Exception as e:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(e)
                return
            # One caller's bad rows must not fail the others: run each on its own.
            for item in batch:
                await self._execute([item])
            return
        self.metrics.inference_seconds.labels(self.model.name).observe(time.perf_counter() - started)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        total = sum(i.rows for i in batch)
        if any(out.shape[:1] != (total,) for out in outputs):
            raise RuntimeError(f"batched outputs do not have {total} rows: {[o.shape for o in outputs]}")
        offset = 0
        for item in batch:
            rows_of = [out[offset : offset + item.rows] for out in outputs]
            offset += item.rows
            if not item.future.done():
                item.future.set_result(rows_of)
