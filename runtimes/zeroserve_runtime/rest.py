"""REST transport: Open Inference Protocol v2 over HTTP, as a small ASGI app served by uvicorn.
It only parses and writes HTTP; answers come from the data plane."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from zeroserve_runtime.dataplane import DataPlane
from zeroserve_runtime.errors import InvalidInput, PayloadTooLarge, ServerBusy, ServingError
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
            return 200, generate_latest(self.metrics.registry), {"content-type": CONTENT_TYPE_LATEST}
        if endpoint == "repository_index":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            ready_only = rest_codec.decode_index_request(
                await self._read_body(receive, headers.get("content-length"))
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
        self.dataplane.model_metadata(name, version)
        try:
            self.dataplane.acquire("rest")
        except ServerBusy:
            # Read and drop the body, holding none of it, so the client gets its 503 rather than a
            # broken pipe halfway through sending.
            await self._discard_body(receive)
            raise
        try:
            body = await self._read_body(receive, headers.get("content-length"))
            request = rest_codec.decode_request(body, headers.get(rest_codec.HEADER_LENGTH))
            del body  # the tensors are views of it where they can be; drop the rest early
            started = time.perf_counter()
            response = await self.dataplane.infer(name, version, request, "rest")
        finally:
            self.dataplane.release()
        payload, header_length = rest_codec.encode_response(response)
        out = self.dataplane.cold_start.response_headers(time.perf_counter() - started, started)
        return 200, payload, {**out, **rest_codec.content_headers(header_length)}

    @staticmethod
    async def _discard_body(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    async def _read_body(self, receive: Receive, content_length: str | None) -> bytes:
        limit = self.max_request_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise InvalidInput("Content-Length must be an integer") from None
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
