"""What a function instance does, whatever platform calls it: load the model once per process (the
function's cold start), then answer OIP v2 REST requests given as (method, path, headers, body).

The platform adapters (`aws_lambda`, `gcf`) only translate their request and response shapes. Requests
get the same answers, errors and headers as from the Zeroserve server, because the inference itself is
`zeroserve_runtime.inference`, which the server uses too. What a function leaves out: the batcher (a
Lambda environment sees one request at a time), admission control (the platform limits concurrency),
and /metrics (nobody can scrape a function instance).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import orjson
from pydantic import ValidationError

from zeroserve_runtime.coldstart import process_start_time
from zeroserve_runtime.errors import ModelLoadError, PayloadTooLarge, ServingError
from zeroserve_runtime.inference import (
    check_served,
    infer,
    refuse_repository_change,
    repository_index,
    server_metadata,
)
from zeroserve_runtime.model import load_model
from zeroserve_runtime.protocol import rest_codec, routes
from zeroserve_runtime.protocol.headers import ColdStart
from zeroserve_runtime.settings import RuntimeSettings
from zeroserve_runtime.storage import redact

log = logging.getLogger("zeroserve.function")

# (status, headers with lowercase names, body)
Response = tuple[int, dict[str, str], bytes]

JSON = "application/json"


def json_response(status: int, value: object, headers: Mapping[str, str] | None = None) -> Response:
    return status, {**(headers or {}), "content-type": JSON}, orjson.dumps(value)


def error_response(error: ServingError) -> Response:
    """An error exactly as the server writes it: its status, its headers, {"error": message}."""
    return json_response(error.status_code, {"error": error.message}, error.headers)


class FunctionApp:
    """One loaded, warmed-up model and the OIP v2 REST surface over it. Safe to call from many threads."""

    def __init__(self, settings: RuntimeSettings, started_at: float | None = None) -> None:
        started_at = process_start_time() if started_at is None else started_at
        self.settings = settings
        self.name = settings.model_name
        begun = time.time()
        marks: dict[str, float] = {}
        self.model = load_model(settings, marks)
        # Process start to ready: the platform's own share of the cold start (sandbox, interpreter
        # start, imports) included, as far as this process can see it.
        self.init_seconds = time.time() - started_at
        # The server's cold-start phases: up to the load (the interpreter, the platform's runtime and the
        # imports), then the model's fetch, load and warm-up.
        self.init_phases = {"import": begun - started_at, **marks, "total": self.init_seconds}
        self.cold_start = ColdStart()
        self.cold_start.mark_ready(self.init_seconds)
        # One session.run at a time, as the server runs by default (one inference with every core's
        # intra-op threads): concurrent runs would each start intra-op threads on the same few cores
        # and all finish later. Waiting here is queue
        # time, which the server's Server-Timing counts too.
        self._run_lock = threading.Lock()
        log.info(
            "model %s from %s ready in %.3fs (%s; %s, %d intra-op threads)",
            self.name,
            redact(settings.model_uri),
            self.init_seconds,
            ", ".join(f"{k} {v:.3f}s" for k, v in self.init_phases.items() if k != "total"),
            self.model.provider,
            settings.intra_op_threads(),
        )

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, entered: float | None = None
    ) -> Response:
        """Answer one HTTP request. Never raises: every failure becomes an error response. `entered`
        (time.perf_counter()) is when the platform handed the request over, where billing starts."""
        entered = time.perf_counter() if entered is None else entered
        try:
            return self._route(
                method.upper(), path, {k.lower(): v for k, v in headers.items()}, body, entered
            )
        except ServingError as e:
            return error_response(e)
        except Exception:
            log.exception("unexpected error serving %s %s", method, path)
            return json_response(500, {"error": "internal server error"})

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, entered: float
    ) -> Response:
        route = routes.match(method, path)
        if route is None:
            return json_response(404, {"error": routes.no_route(method, path)})
        endpoint, p = route
        if endpoint == "infer":
            return self._infer(p["name"], p["version"], headers, body, entered)
        # Once this object exists the model is loaded: live and ready are the same thing here.
        if endpoint == "model_metadata":
            check_served(self.name, p["name"], p["version"])
            return json_response(200, self.model.metadata())
        if endpoint == "model_ready":
            check_served(self.name, p["name"], p["version"])
            return json_response(200, {"ready": True})
        if endpoint == "live":
            return json_response(200, {"live": True})
        if endpoint == "ready":
            return json_response(200, {"ready": True})
        if endpoint == "server_metadata":
            return json_response(200, server_metadata())
        if endpoint == "repository_index":
            self._check_size(body)
            ready_only = rest_codec.decode_index_request(body)
            index = repository_index(self.name, p["repository"], "READY", ready_only)
            return json_response(200, [m.to_json() for m in index])
        if endpoint in ("repository_load", "repository_unload"):
            refuse_repository_change(self.name, p["name"], endpoint.removeprefix("repository_"))
        # No /metrics: nobody can scrape a function instance.
        return json_response(404, {"error": routes.no_route(method, path)})

    def _check_size(self, body: bytes) -> None:
        limit = self.settings.max_request_bytes
        if len(body) > limit:
            raise PayloadTooLarge(f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")

    def _infer(
        self, name: str, version: str | None, headers: dict[str, str], body: bytes, entered: float
    ) -> Response:
        check_served(self.name, name, version)
        self._check_size(body)
        request = rest_codec.decode_request(body, headers.get(rest_codec.HEADER_LENGTH))
        with self._run_lock:
            response = infer(self.model, name, request)
        payload, header_length = rest_codec.encode_response(response)
        # Billed time runs from handler entry to the response, decoding and encoding included.
        out = self.cold_start.response_headers(time.perf_counter() - entered, entered)
        return 200, {**out, **rest_codec.content_headers(header_length)}, payload


def load_settings() -> RuntimeSettings:
    """ZEROSERVE_* environment variables, the same ones the operator sets for the server."""
    try:
        return RuntimeSettings()  # type: ignore[call-arg]  # model_uri comes from the environment
    except ValidationError as e:
        # Said plainly: this is what a function's init log shows when it is deployed without its model.
        problems = "; ".join(
            f"ZEROSERVE_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        )
        raise ModelLoadError(f"the function's settings are invalid: {problems}") from None


_app: FunctionApp | None = None
_app_lock = threading.Lock()


def get_app(started_at: float | None = None) -> FunctionApp:
    """The process's one FunctionApp, created on first use from ZEROSERVE_* environment variables, with
    init time counted from `started_at` (default: this process's start). Concurrent first callers wait
    for the one load. Platform adapters call it as early as the platform allows, so the model loads
    in its init phase rather than in the first request."""
    global _app
    if _app is None:
        with _app_lock:
            if _app is None:
                settings = load_settings()
                if not logging.getLogger().handlers:
                    # functions-framework configures no logging; Lambda's runtime client does its own.
                    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
                # Lambda's root logger drops INFO; the ready line, with the init time, is worth keeping.
                logging.getLogger("zeroserve").setLevel(settings.log_level.upper())
                _app = FunctionApp(settings, started_at)
    return _app
