"""Admission control and adaptive batching in front of the onnxruntime session.

Every admitted request goes through one queue. Inference threads take what is waiting, up to
max_batch_size rows (waiting at most max_queue_delay for more), run it as one session.run, and hand each
caller its own rows back on the event loop. With max_batch_size 1 they run requests one by one.

Collecting in the inference threads rather than on the event loop keeps the session busy back to back:
the next run starts as soon as the last one ends, without waiting for the event loop (busy with I/O,
and sharing the GIL) to hand it over. That round trip cost a fifth of the throughput on a 7 ms model.

With `parallel` threads, several runs share the one session (onnxruntime's run is thread-safe, and the
weights are not copied). One thread collects at a time, so batches fill as they would with one thread
while the others run theirs. While other threads sit idle, a batch takes only its share of
max_batch_size: otherwise, with as many clients as max_batch_size, one batch would hold every request
and the other threads would never get one (half the throughput on MiniLM at 2 threads).

A request alone in the server, for a model whose runs are short, skips the threads and runs in the event
loop's own thread: the hop to a sleeping inference thread and back is two wake-ups, which cost more than
the whole run of a small model (on the quickstart's digits model, 0.5 ms of the server's 0.66 ms per
request on a busy two-core machine, against 0.12 ms in session.run). Blocking the loop for a run that
short costs a request arriving meanwhile less than the hops would have cost this one. Under load,
requests are not alone, and go through the threads, which overlap their runs with the loop's I/O.

With `pad_to`, every run (inline ones too) is padded with zero rows to that many, and each caller gets
only its own rows back. onnxruntime's CUDA provider re-plans every convolution when a run's shape differs
from the last one's, whatever it saw before: on EfficientNet-Lite0 (an H200) 0.1-1.5 s a run, against
2-3 ms at an unchanged shape, so batches of varying size ran 20-68 requests/s where one at a time ran
593. A batch of 16 costs the GPU little more than a batch of 1 (3.0 against 1.7 ms).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from zeroserve_runtime.errors import ServerBusy
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.model import OnnxModel

# Runs at most this long (a moving average of lone requests' runs) may block the event loop.
INLINE_MAX_SECONDS = 0.001
# The moving averages' weight of the newest run.
LEARNING_RATE = 0.2


class Admission:
    """At most `limit` requests and `byte_limit` bytes of their bodies and decoded tensors in the server
    at once; the next one is refused at the door, so memory stays bounded under overload instead of
    queueing without end. A request counts the bytes it declares before its body is read.

    One request larger than the whole byte budget is still admitted when it would be alone: otherwise a
    budget below --max-request-bytes would refuse it forever."""

    def __init__(self, limit: int, on_change: Callable[[int], None], byte_limit: int = 1 << 62) -> None:
        self.limit = limit
        self.byte_limit = byte_limit
        self.count = 0
        self.bytes = 0
        # Bytes held for requests whose size is not known yet (a gRPC message still arriving): they may
        # be waited out, where known bytes are a reason to refuse.
        self.unknown = 0
        self._on_change = on_change
        self._idle = asyncio.Event()
        self._idle.set()
        self._freed = asyncio.Event()
        self.last_taken = time.monotonic()  # when the last request was admitted

    def _fits(self, nbytes: int, held: int) -> bool:
        return held == 0 or held + nbytes <= self.byte_limit

    def acquire(self, nbytes: int = 0) -> None:
        """Take a place and `nbytes`, or raise ServerBusy. Every successful acquire() needs its
        release() of the same bytes (after any resize())."""
        if self.count >= self.limit:
            raise self._crowded()
        if not self._fits(nbytes, self.bytes):
            raise self._full(nbytes)
        self._take(nbytes)

    async def acquire_within(self, nbytes: int, within: float) -> None:
        """acquire(), but a request that does not fit the byte budget yet waits up to `within` seconds
        for others to free room instead of being refused at once: its body, not read yet, waits in the
        socket and costs nothing. A burst that a proxy forwards all at once (Knative's queue-proxy with
        containerConcurrency 0) is then worked off rather than half refused."""
        if self.count >= self.limit:
            raise self._crowded()
        await self._room(nbytes, within)
        self._take(nbytes)

    async def acquire_unknown(self, nbytes: int, within: float) -> None:
        """acquire() for a request of unknown size, holding `nbytes` (its largest) until resize() tells
        the real one. Only known bytes refuse it; room held for other unknown ones is waited for, up to
        `within` seconds, as those turn out small."""
        if self.count >= self.limit:
            raise self._crowded()
        if not self._fits(nbytes, self.bytes - self.unknown):
            raise self._full(nbytes)
        await self._room(nbytes, within)
        self.unknown += nbytes
        self._take(nbytes)

    async def _room(self, nbytes: int, within: float) -> None:
        """Wait, up to `within` seconds, until `nbytes` more fit the byte budget."""
        deadline = asyncio.get_running_loop().time() + within
        while not self._fits(nbytes, self.bytes):
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise self._full(nbytes) from None
            if self.count >= self.limit:
                raise self._crowded()

    def known(self, unknown: int, nbytes: int) -> None:
        """A request admitted with acquire_unknown(unknown) turns out to need `nbytes`."""
        self.unknown -= unknown
        self.resize(unknown, nbytes)

    def resize(self, old: int, new: int) -> None:
        """A request's bytes turn out to be `new` rather than the `old` it was admitted with."""
        self.bytes += new - old
        if new < old:
            self._freed.set()

    def _take(self, nbytes: int) -> None:
        self.last_taken = time.monotonic()
        self.count += 1
        self.bytes += nbytes
        self._idle.clear()
        self._on_change(self.count)

    def _crowded(self) -> ServerBusy:
        return ServerBusy(f"the server is at its limit of {self.limit} requests in flight; retry later")

    def _full(self, nbytes: int) -> ServerBusy:
        return ServerBusy(
            f"the server holds {self.bytes / 2**20:.0f} MiB of requests and this one needs "
            f"{nbytes / 2**20:.0f} MiB more, over its budget of {self.byte_limit / 2**20:.0f} MiB; "
            "retry later"
        )

    def release(self, nbytes: int = 0) -> None:
        if self.count <= 0:
            raise RuntimeError("Admission.release() without a matching acquire()")
        self.count -= 1
        self.bytes -= nbytes
        self._on_change(self.count)
        self._freed.set()
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
    nbytes: int
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[list[np.ndarray]]
    loop: asyncio.AbstractEventLoop
    settled: Callable[[], None]  # called on the loop once the session is done with this item
    enqueued: float = field(default_factory=time.perf_counter)
    resolved: bool = False

    def resolve(self, result: list[np.ndarray] | None, error: BaseException | None = None) -> None:
        """From the inference thread: complete the caller's future on its own loop. Only the first
        call counts, so the item is settled exactly once."""
        if self.resolved:
            return
        self.resolved = True
        try:
            self.loop.call_soon_threadsafe(_complete, self, result, error)
        except RuntimeError:  # the loop is closed: the server is gone and nobody waits for the answer
            pass


def _complete(item: _Item, result: list[np.ndarray] | None, error: BaseException | None) -> None:
    # Before the caller resumes: the next request it sends must find the session free.
    item.settled()
    future = item.future
    if future.done():  # the caller went away (cancelled) while its request ran, or before
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


_STOP = object()


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        max_batch_size: int,
        max_queue_delay_s: float,
        metrics: RuntimeMetrics,
        parallel: int = 1,
        pad_to: int = 0,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size if model.batchable else 1
        self.pad_to = pad_to if model.batchable else 0
        self._padding_rows = metrics.padding_rows.labels(model.name)
        self.max_delay = max_queue_delay_s
        self.metrics = metrics
        # Bound once: labels() costs more than the observation, on every request.
        self._queue_seconds = metrics.queue_seconds.labels(model.name)
        self._inference_seconds = metrics.inference_seconds.labels(model.name)
        self._batch_size = metrics.batch_size.labels(model.name)
        self._inlined = metrics.inline.labels(model.name)
        # With batching on, a lone request waits max_queue_delay for company: running it at once would
        # change what the delay promises.
        self.inline = self.max_batch_size == 1 or max_queue_delay_s == 0
        # A lone request's session.run, seconds and input bytes, averaged; a request much larger than
        # those it was learned from could take much longer, so it goes to the threads.
        self._run_seconds = math.inf
        self._run_bytes = 0.0
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._held: _Item | None = None  # guarded by _collecting
        self._collecting = threading.Lock()
        self._running = 0  # threads inside _execute, guarded by _counting
        # Requests handed to the threads and not yet settled back on the loop, cancelled ones too. Only
        # the loop's thread touches it.
        self._pending = 0
        self._counting = threading.Lock()
        # onnxruntime releases the GIL in run(), so these threads run the session in parallel.
        self._threads = [
            threading.Thread(target=self._run, name=f"inference_{i}", daemon=True) for i in range(parallel)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join)

    async def infer(self, feeds: dict[str, np.ndarray], alone: bool = False) -> list[np.ndarray]:
        """The model's outputs for `feeds`. `alone`: no other request is in the server, so this one may
        run at once in the calling thread (see the module's notes)."""
        nbytes = sum(a.nbytes for a in feeds.values())
        if alone and self._may_run_inline(nbytes):
            return self._run_inline(feeds, nbytes)
        first = next(iter(feeds.values()))
        rows = first.shape[0] if first.ndim else 1
        # Only requests whose tensors agree beyond the first dimension can be stacked.
        signature = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(feeds.items()))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._pending += 1
        self._queue.put(_Item(feeds, nbytes, rows, signature, future, loop, self._settled))
        return await future

    def _settled(self) -> None:
        self._pending -= 1

    def _may_run_inline(self, nbytes: int) -> bool:
        # A request cancelled by its caller leaves the server while its run may go on in a thread: the
        # count of pending runs, not admission's, says whether the session is free.
        return (
            self.inline
            and self._pending == 0
            and self._run_seconds <= INLINE_MAX_SECONDS
            and nbytes <= 2 * self._run_bytes
        )

    def _run_inline(self, feeds: dict[str, np.ndarray], nbytes: int) -> list[np.ndarray]:
        self._inlined.inc()
        self._queue_seconds.observe(0.0)
        self._batch_size.observe(1)
        started = time.perf_counter()
        outputs = self._run_model([feeds])
        elapsed = time.perf_counter() - started
        self._inference_seconds.observe(elapsed)
        self._learn(elapsed, nbytes)
        return outputs

    def _run_model(self, parts: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """One model.run over the requests' feeds stacked in order, padded with zero rows to pad_to when
        asked (in the one concatenation), and the padding's rows cut off the outputs."""
        rows = sum(next(iter(p.values())).shape[0] for p in parts) if self.pad_to else 0
        extra = self.pad_to - rows if 0 < rows < self.pad_to else 0
        if len(parts) == 1 and not extra:
            return self.model.run(parts[0])
        feeds = {
            name: np.concatenate(
                [p[name] for p in parts] + ([np.zeros((extra, *a.shape[1:]), dtype=a.dtype)] if extra else [])
            )
            for name, a in parts[0].items()
        }
        if not extra:
            return self.model.run(feeds)
        self._padding_rows.inc(extra)
        return [out[:rows] for out in self.model.run(feeds)]

    def _learn(self, seconds: float, nbytes: int) -> None:
        """Average in one lone request's run. Threads may race here: an average a little off only moves
        the line between inline and threaded runs a little."""
        if self._run_seconds == math.inf:
            self._run_seconds, self._run_bytes = seconds, float(nbytes)
            return
        self._run_seconds += (seconds - self._run_seconds) * LEARNING_RATE
        self._run_bytes += (nbytes - self._run_bytes) * LEARNING_RATE

    # -- the inference thread ------------------------------------------------------------------------

    def _next(self, within: float | None) -> _Item | object | None:
        """The held-over item, else the next queued one, waiting at most `within` seconds (None: forever)."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            if within is None:
                return self._queue.get()
            if within <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=within)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while True:
            with self._collecting:
                collected, stop = self._collect()
                with self._counting:
                    self._running += 1
            batch = []
            for item in collected:
                if item.future.cancelled():
                    item.resolve(None)  # nothing to run, but the loop counts it settled
                else:
                    batch.append(item)
            now = time.perf_counter()
            for item in batch:  # once per request, not again if its batch is rerun
                self._queue_seconds.observe(now - item.enqueued)
            try:
                self._execute(batch)
            except Exception as e:  # never lose the runner: fail this batch's callers and go on
                for item in batch:
                    item.resolve(None, e)
            finally:
                with self._counting:
                    self._running -= 1
            if stop:
                return

    def _collect(self) -> tuple[list[_Item], bool]:
        first = self._next(None)
        if first is _STOP:
            return [], True
        assert isinstance(first, _Item)
        batch, rows = [first], first.rows
        with self._counting:
            idle = len(self._threads) - 1 - self._running
        limit = -(-self.max_batch_size // (idle + 1))  # this batch's share, rounded up
        deadline = time.perf_counter() + self.max_delay
        while rows < limit:
            item = self._next(deadline - time.perf_counter())
            if item is None:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Item)
            if item.signature != first.signature or rows + item.rows > self.max_batch_size:
                self._held = item  # starts the next batch
                break
            batch.append(item)
            rows += item.rows
        return batch, False

    def _execute(self, batch: list[_Item]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        self._batch_size.observe(len(batch))
        try:
            outputs = self._run_model([i.feeds for i in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0].resolve(None, e)
                return
            # One caller's bad rows must not fail the others: run each on its own.
            for item in batch:
                self._execute([item])
            return
        elapsed = time.perf_counter() - started
        self._inference_seconds.observe(elapsed)
        if len(batch) == 1:
            self._learn(elapsed, batch[0].nbytes)
            batch[0].resolve(outputs)
            return
        total = sum(i.rows for i in batch)
        if any(out.shape[:1] != (total,) for out in outputs):
            raise RuntimeError(f"batched outputs do not have {total} rows: {[o.shape for o in outputs]}")
        offset = 0
        for item in batch:
            item.resolve([out[offset : offset + item.rows] for out in outputs])
            offset += item.rows
