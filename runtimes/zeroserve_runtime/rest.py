"""REST transport: Open Inference Protocol v2 over HTTP, as a small ASGI app served by uvicorn.
It only parses and writes HTTP; answers come from the data plane."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client.exposition import choose_encoder

from zeroserve_runtime.dataplane import DataPlane
from zeroserve_runtime.errors import InvalidInput, PayloadTooLarge, ServerBusy, ServingError
from zeroserve_runtime.memory import memory_cost
from zeroserve_runtime.metrics import RuntimeMetrics
from zeroserve_runtime.protocol import rest_codec, routes

log = logging.getLogger("zeroserve.runtime")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RestApp:
    def __init__(self, dataplane: DataPlane, metrics: RuntimeMetrics, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self._route(scope, receive)
        except ServingError as e:
            status, body, headers = e.status_code, orjson.dumps({"error": e.message}), dict(e.headers)
            headers["content-type"] = "application/json"
        except Exception:
            log.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            status, body, headers = (
                500,
                b'{"error":"internal server error"}',
                {"content-type": "application/json"},
            )
        raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        # A known length spares the chunked encoding uvicorn would otherwise use.
        raw_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        path, method = scope["path"], scope["method"]
        dp = self.dataplane
        route = routes.match(method, path)
        if route is None:
            return self._error(404, routes.no_route(method, path))
        endpoint, p = route
        if endpoint == "infer":
            return await self._infer(scope, receive, p["name"], p["version"])
        if endpoint == "model_metadata":
            return self._json(dp.model_metadata(p["name"], p["version"]))
        if endpoint == "model_ready":
            return self._status(dp.model_ready(p["name"], p["version"]), "ready")
        if endpoint == "live":
            return self._status(dp.live(), "live")
        if endpoint == "ready":
            return self._status(dp.ready(), "ready")
        if endpoint == "server_metadata":
            return self._json(dp.server_metadata())
        if endpoint == "metrics":
            # OpenMetrics when the scraper asks for it: its _created lines let a Prometheus with
            # created-timestamp-zero-ingestion count the first request and cold start of a new pod.
            accept = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"accept"), "")
            encoder, content_type = choose_encoder(accept)
            return 200, encoder(self.metrics.registry), {"content-type": content_type}
        if endpoint == "repository_index":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            ready_only = rest_codec.decode_index_request(
                await self._read_body(receive, self._declared_length(headers.get("content-length")))
            )
            return self._json([m.to_json() for m in dp.repository_index(p["repository"], ready_only)])
        if endpoint in ("repository_load", "repository_unload"):
            dp.repository_change(p["name"], endpoint.removeprefix("repository_"))
        return self._error(404, routes.no_route(method, path))

    async def _infer(
        self, scope: Scope, receive: Receive, name: str, version: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # Unknown models are refused before their bodies are read.
        self.dataplane.check_model(name, version)
        declared = self._declared_length(headers.get("content-length"))
        binary = rest_codec.HEADER_LENGTH in headers
        # A chunked body holds room for the largest one allowed until its size is known.
        nbytes = memory_cost(self.max_request_bytes if declared is None else declared, binary)
        try:
            await self.dataplane.acquire_within("rest", nbytes)
        except ServerBusy:
            # A client that waits for 100 Continue has not sent its body, and now never will. Any other
            # is already sending it: read and drop it, holding none of it, so the client gets its 503
            # rather than a broken pipe halfway through sending.
            if headers.get("expect", "").lower() != "100-continue":
                await self._discard_body(receive)
            raise
        try:
            body = await self._read_body(receive, declared)
            if declared is None:
                held, nbytes = nbytes, memory_cost(len(body), binary)
                self.dataplane.admission.resize(held, nbytes)
            # Timed from here, as a function's handler is, so that Server-Timing compares like with like.
            started = time.perf_counter()
            request = self.dataplane.decoded(
                "rest", rest_codec.decode_request, body, headers.get(rest_codec.HEADER_LENGTH)
            )
            del body  # the tensors are views of it where they can be; drop the rest early
            response = await self.dataplane.infer(name, version, request, "rest")
            del request
        finally:
            self.dataplane.release(nbytes)
        payload, header_length = rest_codec.encode_response(response)
        out = self.dataplane.cold_start.response_headers(time.perf_counter() - started, started)
        return 200, payload, {**out, **rest_codec.content_headers(header_length)}

    @staticmethod
    async def _discard_body(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    def _declared_length(self, content_length: str | None) -> int | None:
        """The body's Content-Length, refused with 413 before anything is read when over the limit."""
        if content_length is None:
            return None
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidInput("Content-Length must be an integer") from None
        if declared > self.max_request_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {self.max_request_bytes} bytes"
            )
        return declared

    async def _read_body(self, receive: Receive, declared: int | None) -> bytes | bytearray:
        limit = self.max_request_bytes
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending the whole body")
        first = message.get("body", b"")
        if not message.get("more_body"):
            if len(first) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return first
        if declared is not None:
            # Chunks copied into one buffer of the declared size: joining them would hold the body twice.
            buffer = bytearray(declared)
            view = memoryview(buffer)
            size = 0
            chunk = first
            while True:
                end = size + len(chunk)
                if end > declared:
                    raise InvalidInput(f"the body is longer than its Content-Length of {declared} bytes")
                view[size:end] = chunk
                size = end
                if not message.get("more_body"):
                    break
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise InvalidInput("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
            if size != declared:
                raise InvalidInput(f"the body has {size} bytes, but its Content-Length is {declared}")
            return buffer
        chunks = [first]
        size = len(first)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
        return status, orjson.dumps({"error": message}), {"content-type": "application/json"}

    @staticmethod
    def _json(value: object) -> tuple[int, bytes, dict[str, str]]:
        return 200, orjson.dumps(value), {"content-type": "application/json"}

    @staticmethod
    def _status(ok: bool, key: str) -> tuple[int, bytes, dict[str, str]]:
        # Clients read the status code (Triton answers with no body); the body helps humans with curl.
        return (200 if ok else 503), orjson.dumps({key: ok}), {"content-type": "application/json"}
