"""The model as a Google Cloud Function (2nd gen, HTTP trigger), run by functions-framework.

Entry point: `infer`. functions-framework imports this module in gunicorn's master process, then forks
the worker that serves requests on its threads. onnxruntime is not fork-safe: a session, or even the
import, carried across the fork leaves the worker with thread pools whose threads stayed in the master
(no intra-op parallelism; a hang or abort when the worker exits). So nothing here imports onnxruntime:
the model loads in the worker, in the background as soon as it is forked (still the instance's cold
start, not the first request's), or on the first request where nothing forks (`--debug`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

import functions_framework
from flask import Request, Response

from zeroserve_runtime.coldstart import process_start_time
from zeroserve_runtime.errors import PayloadTooLarge, ServingError

if TYPE_CHECKING:
    from zeroserve_runtime.functions.core import FunctionApp

log = logging.getLogger("zeroserve.function")
CHUNK = 1 << 20
# When the instance started: the master process, which the platform started, not the forked worker.
STARTED_AT = process_start_time()


def app() -> FunctionApp:
    from zeroserve_runtime.functions.core import get_app

    return get_app(STARTED_AT)


def _load_in_background() -> None:
    # Only in gunicorn's workers: any other fork (multiprocessing, a subprocess with preexec_fn in a
    # process that merely imported this module) must not start loading a model.
    if "gunicorn.arbiter" not in sys.modules:
        return

    def load() -> None:
        try:
            app()
        except Exception:  # the first request tries again and answers with the error
            log.exception("the model could not be loaded")

    threading.Thread(target=load, name="model-loader", daemon=True).start()


os.register_at_fork(after_in_child=_load_in_background)


def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past `limit` bytes before it is all in memory, declared length or not."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    # A stream read may return less than asked for, so read until the end (or the limit).
    while chunk := request.stream.read(min(CHUNK, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


@functions_framework.http
def infer(request: Request) -> Response:
    from zeroserve_runtime.functions.core import error_response

    entered = time.perf_counter()  # before any wait for the model: Cloud Run bills that wait too
    try:
        function = app()  # waits for the background load, if it is still running
        body = _read_body(request, function.settings.max_request_bytes)
    except ServingError as e:  # a model that cannot load (500), a body too large (413)
        status, headers, payload = error_response(e)
    else:
        status, headers, payload = function.handle(
            request.method, request.path, request.headers, body, entered
        )
    return Response(payload, status=status, headers=headers)
