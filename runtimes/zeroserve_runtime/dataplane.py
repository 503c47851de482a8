"""The transport-agnostic data plane: what REST and gRPC both answer, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from zeroserve_runtime import memory
from zeroserve_runtime.batching import Admission, Batcher
from zeroserve_runtime.errors import InvalidInput, ModelNotReady, ServerBusy, ServingError
from zeroserve_runtime.inference import (
    build_response,
    check_served,
    refuse_repository_change,
    repository_index,
    server_metadata,
    wanted_outputs,
)
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.model import OnnxModel
from zeroserve_runtime.protocol.headers import ColdStart
from zeroserve_runtime.protocol.repository import ModelIndex
from zeroserve_runtime.protocol.tensors import InferRequest, InferResponse

# How long a gRPC request, whose size is known only once it has arrived, waits for room held for others
# still arriving before it is refused.
UNKNOWN_SIZE_WAIT_SECONDS = 1.0
# How long a request that fits the count limit but not yet the byte budget waits for room before a 503.
BYTE_BUDGET_WAIT_SECONDS = 5.0


class DataPlane:
    def __init__(self, model_name: str, metrics: RuntimeMetrics, admission: Admission) -> None:
        self.model_name = model_name
        self.metrics = metrics
        self.admission = admission
        self.model: OnnxModel | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        # Both transports put its timing and cold-start headers on their answers.
        self.cold_start = ColdStart()
        self.trimmer = memory.Trimmer()
        # Metric children by label values, bound on first use: labels() costs more than the count.
        self._counts: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}

    def attach(self, model: OnnxModel, batcher: Batcher, init_seconds: float) -> None:
        """Turn ready. The start-to-ready time is recorded first, so the first answer carries it."""
        self.cold_start.mark_ready(init_seconds)
        self.model, self.batcher = model, batcher

    # -- health and metadata ---------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def server_metadata(self) -> dict[str, object]:
        return server_metadata("statistics/prometheus")

    def decoded(self, protocol: str, decode: Callable[..., InferRequest], *wire: Any) -> InferRequest:
        """The request `decode` makes of the wire format; one the client got wrong is counted as
        outcome="invalid", as `infer` counts a request that decodes but does not fit the model."""
        try:
            return decode(*wire)
        except InvalidInput:
            self._count(protocol, "invalid")
            raise

    def _count(self, protocol: str, outcome: str) -> None:
        child = self._counts.get((protocol, outcome))
        if child is None:
            child = self._counts[protocol, outcome] = self.metrics.requests.labels(
                self.model_name, protocol, outcome
            )
        child.inc()

    def _observe(self, protocol: str, seconds: float) -> None:
        child = self._durations.get(protocol)
        if child is None:
            child = self._durations[protocol] = self.metrics.request_seconds.labels(self.model_name, protocol)
        child.observe(seconds)

    def check_model(self, name: str, version: str | None = None) -> None:
        """Refuse a request for a model not served here, or not loaded yet."""
        self._model(name, version)

    def _model(self, name: str, version: str | None) -> OnnxModel:
        check_served(self.model_name, name, version)
        if self.model is None:
            raise ModelNotReady(f"model '{name}' is still loading")
        return self.model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, object]:
        return self._model(name, version).metadata()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self._model(name, version)
        except ModelNotReady:
            return False
        return not self.draining

    # -- the model repository (read-only) ----------------------------------------------------------------

    def repository_index(self, repository: str | None, ready_only: bool) -> list[ModelIndex]:
        if self.model is None:
            return repository_index(self.model_name, repository, "LOADING", ready_only)
        if self.draining:
            # Still answering what it accepted, but no longer ready for more.
            return repository_index(self.model_name, repository, "UNLOADING", ready_only, "shutting down")
        return repository_index(self.model_name, repository, "READY", ready_only)

    def repository_change(self, name: str, action: str) -> None:
        refuse_repository_change(self.model_name, name, action)

    # -- inference -------------------------------------------------------------------------------------

    def acquire(self, protocol: str, nbytes: int = 0) -> None:
        """Hold a place and `nbytes` for one request from before its body is read until its answer is
        ready, so what overload can pile up (bodies, decoded tensors) is bounded by count and by bytes;
        a full server answers 503."""
        try:
            self.admission.acquire(nbytes)
        except ServerBusy:
            self._count(protocol, "busy")
            raise

    async def acquire_within(self, protocol: str, nbytes: int) -> None:
        """acquire(), waiting a while for room in the byte budget (see Admission.acquire_within)."""
        try:
            await self.admission.acquire_within(nbytes, BYTE_BUDGET_WAIT_SECONDS)
        except ServerBusy:
            self._count(protocol, "busy")
            raise

    async def acquire_unknown(self, protocol: str, nbytes: int) -> None:
        """acquire() for a request whose size is known only once it has arrived (gRPC)."""
        try:
            await self.admission.acquire_unknown(nbytes, UNKNOWN_SIZE_WAIT_SECONDS)
        except ServerBusy:
            self._count(protocol, "busy")
            raise

    def release(self, nbytes: int = 0) -> None:
        self.admission.release(nbytes)
        if nbytes >= memory.TRIM_AFTER_BYTES and self.admission.bytes < memory.TRIM_AFTER_BYTES:
            # The burst of large requests is over: hand what they left in malloc's free lists back.
            self.trimmer.trim()

    @contextlib.contextmanager
    def admit(self, protocol: str) -> Iterator[None]:
        """acquire() and release() around a block, for transports that need nothing in between."""
        self.acquire(protocol)
        try:
            yield
        finally:
            self.release()

    async def infer(
        self, name: str, version: str | None, request: InferRequest, protocol: str
    ) -> InferResponse:
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._infer(name, version, request)
            outcome = "success"
            return response
        except InvalidInput:
            outcome = "invalid"
            raise
        except ServingError as e:
            outcome = type(e).__name__.lower()
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # the client went away (a closed connection, a deadline): not our error
            raise
        finally:
            self._count(protocol, outcome)
            if outcome == "success":
                self._observe(protocol, time.perf_counter() - started)

    async def _infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        model = self._model(name, version)
        # While draining, requests still arriving on open connections are served: none is lost.
        wanted = wanted_outputs(model, name, request)
        assert self.batcher is not None
        # Admission counts both transports, and requests still sending their bodies: one alone here has
        # nothing to overlap its run with.
        results = await self.batcher.infer(request.inputs, alone=self.admission.count <= 1)
        return build_response(model, name, request, wanted, results)
