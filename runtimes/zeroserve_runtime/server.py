"""The runtime's lifecycle: listen, fetch, load, warm up, turn ready, serve, drain on SIGTERM.

Cold start is accounted from the moment the kernel started this process, so the figure includes the
interpreter and imports, which are most of it for a small model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import uvicorn

from zeroserve_runtime.batching import Admission, Batcher
from zeroserve_runtime.coldstart import ModelLoader
from zeroserve_runtime.dataplane import DataPlane
from zeroserve_runtime.errors import ModelLoadError
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.model import padded_rows
from zeroserve_runtime.rest import RestApp
from zeroserve_runtime.settings import RuntimeSettings

log = logging.getLogger("zeroserve.runtime")


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runtime owns SIGTERM: it drains gRPC and REST together, then exits 0.
        yield


class Runtime:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.metrics = RuntimeMetrics()
        self.admission = Admission(
            settings.max_concurrency,
            self.metrics.inflight.labels(settings.model_name).set,
            settings.inflight_bytes(),
        )
        self.dataplane = DataPlane(settings.model_name, self.metrics, self.admission)
        self.stopping = asyncio.Event()
        self.http: _Uvicorn | None = None
        self.grpc = None
        self.batcher: Batcher | None = None

    async def run(self, loader: ModelLoader, imported_at: float) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

        # Listen first: liveness answers while the model loads; readiness waits for it.
        config = uvicorn.Config(
            RestApp(self.dataplane, self.metrics, s.max_request_bytes),
            host=s.host,
            port=s.http_port,
            http="httptools",
            ws="none",  # no websockets: skips importing wsproto, ~40ms of every cold start
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=max(1, round(s.shutdown_grace_seconds)),
        )
        self.http = _Uvicorn(config)
        http_task = loop.create_task(self.http.serve(), name="http")
        while not self.http.started:
            if http_task.done():
                http_task.result()
                raise OSError(f"the REST server did not start on {s.host}:{s.http_port}")
            await asyncio.sleep(0.005)

        # gRPC too: its clients must see ServerLive true and ServerReady false while the model loads, as
        # REST's do, rather than a refused connection they cannot tell from a dead server.
        if s.grpc_port:
            from zeroserve_runtime.grpc_server import build_server

            self.grpc = build_server(self.dataplane, f"{s.host}:{s.grpc_port}", s.max_request_bytes)
            await self.grpc.start()

        name = s.model_name
        loaded = asyncio.Event()
        # A daemon thread of its own, not the loop's executor: asyncio.run would wait for an executor's
        # threads at exit, so a SIGTERM mid-load would still wait out the whole download.
        threading.Thread(target=_wait_then, args=(loader, loop, loaded.set), daemon=True).start()
        loading = loop.create_task(loaded.wait())
        stop = loop.create_task(self.stopping.wait())
        try:
            await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not loaded.is_set():
                # SIGTERM mid-load (a scale-down, a rollout): nothing was accepted that needs finishing,
                # and the loader thread dies with the process.
                log.info("stopping while the model is still loading")
                await self._stop_listening(http_task, grace=0)
                return
            model = loader.wait()
        except BaseException:
            await self._stop_listening(http_task, grace=0)
            raise
        finally:
            stop.cancel()
            loading.cancel()
        self.metrics.fetch_seconds.labels(name).set(loader.marks["fetch"])
        if loader.fetched is not None and loader.fetched.source != "local":
            hit = loader.fetched.source == "cache"
            # Both series, one at 0: a scrape shows a miss as plainly as a hit.
            self.metrics.cache_hits.labels(name).inc(int(hit))
            self.metrics.cache_misses.labels(name).inc(int(not hit))
        self.metrics.load_seconds.labels(name).set(loader.marks["load"])
        self.metrics.execution_provider.labels(name, model.provider).set(1)

        self.batcher = Batcher(
            model,
            s.max_batch_size,
            s.max_queue_delay_ms / 1000,
            self.metrics,
            s.parallel_inferences,
            pad_to=padded_rows(s, model),
        )
        self.batcher.start()
        phases = loader.phases(imported_at, time.time())
        self.dataplane.attach(model, self.batcher, phases["total"])
        for phase, seconds in phases.items():
            self.metrics.cold_start_seconds.labels(name, phase).observe(seconds)
        # The storage module's own lines come before logging is set up (the model loads alongside the
        # imports), so where the model came from is said here.
        source = {"cache": " (cache hit)", "download": " (downloaded)"}.get(
            loader.fetched.source if loader.fetched is not None else "", ""
        )
        log.info(
            "model %s ready in %.3fs (%s); REST :%d%s; %d parallel inference(s); batching %s; "
            "%d MiB for requests in flight",
            name,
            phases["total"],
            ", ".join(
                f"{k} {v:.3f}s" + (source if k == "fetch" else "") for k, v in phases.items() if k != "total"
            ),
            s.http_port,
            f", gRPC :{s.grpc_port}" if s.grpc_port else "",
            s.parallel_inferences,
            (f"up to {self.batcher.max_batch_size}" if self.batcher.max_batch_size > 1 else "off")
            + (f", padded to {self.batcher.pad_to}" if self.batcher.pad_to else ""),
            self.admission.byte_limit >> 20,
        )

        await self.stopping.wait()
        await self.drain(http_task)

    async def drain(self, http_task: asyncio.Task[None]) -> None:
        """Stop accepting, finish what was accepted (REST and gRPC together), then stop inferring."""
        self.dataplane.draining = True
        # A lame duck: not ready, still accepting. Connections a Service or proxy sends before it has
        # heard of the shutdown are served, instead of meeting a closed port or being reset in the
        # listen backlog when it closes. It lasts until no request has come for the drain delay, as
        # Knative's queue-proxy drains: on a loaded node kube-proxy took over 3 s to stop routing here,
        # and a fixed delay closed the port on requests still arriving. At most half the shutdown grace,
        # leaving the rest for what is in flight.
        grace = self.settings.shutdown_grace_seconds
        quiet = self.settings.drain_delay_seconds
        until = time.monotonic() + max(quiet, grace / 2)
        await asyncio.sleep(quiet)
        while True:
            now = time.monotonic()
            idle = now - self.admission.last_taken
            if idle >= quiet or now >= until:
                break
            await asyncio.sleep(min(quiet - idle, until - now))
        log.info("shutting down: finishing %d request(s) in flight", self.admission.count)
        await self._stop_listening(http_task, grace)
        # Only now: a request still uploading its body when SIGTERM came has been answered too.
        await self.admission.wait_idle(grace)
        if self.batcher is not None:
            await self.batcher.stop()

    async def _stop_listening(self, http_task: asyncio.Task[None], grace: float) -> None:
        """Stop both servers, waiting up to `grace` for what they accepted."""
        waits: list[Awaitable[object]] = [http_task]
        if self.grpc is not None:
            waits.append(self.grpc.stop(grace))
        if self.http is not None:
            self.http.should_exit = True
        await asyncio.gather(*waits)


def _wait_then(loader: ModelLoader, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    loader.join()
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop has closed: the server stopped before the model arrived
        pass


def serve(settings: RuntimeSettings, loader: ModelLoader, imported_at: float) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(Runtime(settings).run(loader, imported_at))
    except ModelLoadError as e:
        log.error("cannot serve: %s", e)
        return 1
    return 0
