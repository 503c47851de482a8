"""A local stand-in for an AWS Lambda function URL: plain HTTP in, a function URL event (payload format
2.0) to the Lambda function, its response back out as HTTP, the way the function URL service maps them.

    python -m zeroserve_runtime.functions.url_emulator --port 9000 --backend direct
    python -m zeroserve_runtime.functions.url_emulator --port 9000 --backend rie --rie-url http://127.0.0.1:8080

Backends:
- `direct` imports `zeroserve_runtime.functions.aws_lambda` into this process (Lambda's init phase, so
  the model loads before the emulator listens) and calls its handler in a worker thread;
- `rie` posts each event to the AWS Lambda Runtime Interface Emulator, which runs the handler under the
  real Lambda runtime client (`aws-lambda-rie python -m awslambdaric <handler>`), as in a Lambda
  container image.

Either way there is one execution environment, and Lambda gives an environment one event at a time, so
invocations are serialized: concurrent requests queue here, where Lambda would start more environments
(each with its own cold start). Not emulated: IAM auth, CORS, streaming responses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlparse

import uvicorn

log = logging.getLogger("zeroserve.function_url")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Lambda's limit on a synchronous invocation's request and response payloads (the event and the
# function's response as JSON): 6 MB. A function URL answers 413 or 502 past it.
PAYLOAD_LIMIT = 6 * 2**20
INVOCATIONS_PATH = "/2015-03-31/functions/function/invocations"
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml", "application/yaml")


class FunctionError(Exception):
    """The function failed (init error, unhandled exception, timeout): a function URL answers 502."""


class _Disconnected(Exception):
    """The client went away before its request was all in."""


class Backend(Protocol):
    def invoke(self, event: bytes) -> bytes:
        """The function's response payload (JSON) to one event payload (JSON); FunctionError if it failed."""
        ...


class _Context:
    """The few Lambda context attributes a handler may read; ours reads none."""

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = "zeroserve"
        self.memory_limit_in_mb = "3008"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


class DirectBackend:
    """The handler in this process, as Lambda would import and call it."""

    def __init__(self) -> None:
        from zeroserve_runtime.functions import aws_lambda  # loads the model: Lambda's init phase

        self._handler = aws_lambda.handler

    def invoke(self, event: bytes) -> bytes:
        try:
            return json.dumps(self._handler(json.loads(event), _Context())).encode()
        except Exception as e:
            log.exception("the function failed")
            raise FunctionError(f"{type(e).__name__}: {e}") from e


class RieBackend:
    """The handler under the Runtime Interface Emulator, reached through its invocations endpoint."""

    def __init__(self, rie_url: str, timeout: float = 300) -> None:
        self.url = rie_url.rstrip("/") + INVOCATIONS_PATH
        self.timeout = timeout

    def wait_listening(self, within: float) -> None:
        """RIE has no health endpoint and starts the runtime only on the first invocation: wait for its
        port to accept connections, so this emulator is not ready before RIE is."""
        parsed = urlparse(self.url)
        deadline = time.monotonic() + within
        while True:
            try:
                with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise OSError(f"the Runtime Interface Emulator is not listening at {self.url}") from None
                time.sleep(0.05)

    def invoke(self, event: bytes) -> bytes:
        request = urllib.request.Request(
            self.url, data=event, headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                payload = r.read()
                failed = r.headers.get("x-amz-function-error")
        except urllib.error.HTTPError as e:  # RIE: 502 for an init or runtime failure
            raise FunctionError(f"RIE answered {e.code}: {e.read()[:500]!r}") from None
        except OSError as e:
            raise FunctionError(f"cannot reach the Runtime Interface Emulator at {self.url}: {e}") from None
        if failed:
            raise FunctionError(f"function error {failed}: {payload[:500]!r}")
        return payload


def function_error(result: object) -> bool:
    """Whether a response payload is the runtime's report of a failed invocation. Lambda flags those with
    X-Amz-Function-Error; RIE answers them as a plain 200 with {"errorMessage", "errorType", ...}."""
    return (
        isinstance(result, dict)
        and "statusCode" not in result
        and {"errorMessage", "errorType"} <= set(result)
    )


def build_event(scope: Scope, body: bytes) -> dict[str, Any]:
    """The function URL event for one HTTP request (payload format 2.0, as AWS documents it)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        # Repeated headers reach the function joined by commas.
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    cookie = headers.pop("cookie", None)
    query = scope.get("query_string", b"").decode("latin-1")
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    host = headers.get("host", "localhost")
    now = time.time()
    client = scope.get("client") or ("127.0.0.1", 0)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": scope["path"],
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": host.split(".")[0],
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": scope["method"],
                "path": scope["path"],
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "sourceIp": client[0],
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookie:
        event["cookies"] = [c.strip() for c in cookie.split(";") if c.strip()]
    if params:
        event["queryStringParameters"] = params
    if body:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type.startswith(TEXT_TYPES):
            event["body"] = body.decode("utf-8", errors="replace")
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def http_response(payload: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What a function URL sends back for the function's response payload."""
    try:
        result = json.loads(payload)
    except ValueError:
        raise FunctionError(f"the function's response is not JSON: {payload[:200]!r}") from None
    if function_error(result):
        raise FunctionError(f"{result['errorType']}: {result['errorMessage']}")
    if not isinstance(result, dict) or "statusCode" not in result:
        # Any other JSON is the body of a 200, as application/json.
        return 200, [(b"content-type", b"application/json")], payload
    try:
        body = result.get("body") or ""
        data = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        headers = [
            (str(k).encode("latin-1"), str(v).encode("latin-1"))
            for k, v in (result.get("headers") or {}).items()
        ]
        headers += [(b"set-cookie", str(c).encode("latin-1")) for c in result.get("cookies") or []]
        return int(result["statusCode"]), headers, data
    except (ValueError, TypeError, AttributeError) as e:  # a response no function URL could send on
        raise FunctionError(f"malformed function response: {e}") from None


class FunctionUrlApp:
    """The ASGI app: each request becomes one invocation, in the single worker thread."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # One thread: one invocation at a time, as one Lambda execution environment takes them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="invoke")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._answer(scope, receive)
        except _Disconnected:
            return  # nobody to answer, and nothing to invoke the function with
        headers = [h for h in headers if h[0].lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = await self._read_body(receive)
        if body is None:
            return _message(
                413, f"Request must be smaller than {PAYLOAD_LIMIT} bytes for the InvokeFunction operation"
            )
        event = json.dumps(build_event(scope, body)).encode()
        if len(event) > PAYLOAD_LIMIT:
            return _message(
                413, f"Request must be smaller than {PAYLOAD_LIMIT} bytes for the InvokeFunction operation"
            )
        loop = asyncio.get_running_loop()
        try:
            payload = await loop.run_in_executor(self._executor, self.backend.invoke, event)
            if len(payload) > PAYLOAD_LIMIT:
                raise FunctionError(f"response payload of {len(payload)} bytes exceeds {PAYLOAD_LIMIT} bytes")
            return http_response(payload)
        except FunctionError as e:
            log.error("%s %s: %s", scope["method"], scope["path"], e)
            return _message(502, "Internal Server Error")

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        """The whole body, or None past the payload limit (read to the end, so the client gets its 413)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            size += len(message.get("body", b""))
            if size <= PAYLOAD_LIMIT:
                chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks) if size <= PAYLOAD_LIMIT else None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _message(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    # The function URL service's own errors come as {"Message": ...}, not from the function.
    return status, [(b"content-type", b"application/json")], json.dumps({"Message": message}).encode()


def make_backend(backend: str, rie_url: str | None = None) -> Backend:
    if backend == "direct":
        return DirectBackend()
    if backend == "rie":
        rie = RieBackend(rie_url or "http://127.0.0.1:8080")
        rie.wait_listening(within=30)
        return rie
    raise ValueError(f"unknown backend {backend!r}: direct or rie")


async def _serve(app: FunctionUrlApp, host: str, port: int, backend: str) -> None:
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="off", ws="none", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"the function URL emulator did not start on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    print(f"function URL emulator ({backend} backend) listening on http://{host}:{bound}", flush=True)
    await task


def serve(port: int, backend: str = "direct", rie_url: str | None = None, host: str = "127.0.0.1") -> None:
    """Serve until SIGINT or SIGTERM (uvicorn handles both)."""
    app = FunctionUrlApp(make_backend(backend, rie_url))
    try:
        asyncio.run(_serve(app, host, port, backend))
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zeroserve_runtime.functions.url_emulator",
        description="Serve the Lambda handler behind a local stand-in for an AWS Lambda function URL.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--backend",
        choices=["direct", "rie"],
        default="direct",
        help="direct: the handler in this process; rie: a running Runtime Interface Emulator",
    )
    parser.add_argument(
        "--rie-url",
        default="http://127.0.0.1:8080",
        help="the Runtime Interface Emulator's address, for --backend rie (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from zeroserve_runtime.errors import ModelLoadError

    try:
        serve(args.port, args.backend, args.rie_url, args.host)
    except ModelLoadError as e:
        log.error("cannot serve: %s", e)
        return 1
    except OSError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
