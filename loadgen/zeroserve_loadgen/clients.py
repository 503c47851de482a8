"""One sender per target kind. Every sender posts the same OIP v2 inference request and reports what the
report needs: status, whether the answer was a real inference, and what the target said about itself
(cold start, init time, server-side inference time). Requests go through locust's clients so locust's
own statistics and events see them too."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import orjson
from zeroserve_runtime.protocol import headers as zh

from zeroserve_loadgen.targets import BearerAuth, BenchFileError, SigV4Auth, Target

# Response headers are matched case-insensitively; these are the lowercase names.
_COLD, _INIT, _AGE, _TIMING = zh.COLD_START, zh.INIT_SECONDS, zh.READY_AGE, zh.SERVER_TIMING


class Outcome(NamedTuple):
    status: int  # HTTP status, 0 when no response came back (connection error, timeout)
    ok: bool
    latency_s: float
    cold: bool  # the target said this was the first answer of a fresh process
    server_s: float  # the target's own inference time, -1 when it did not say
    init_s: float  # process start to ready, reported with the cold-start header; -1 otherwise
    ready_age_s: float  # how long after ready the request arrived, with the cold-start header; -1 otherwise
    error: str
    replica: str = ""  # which replica answered, where the target says (zh.REPLICA)
    revision: str = ""  # which revision answered, where the target says (zh.REVISION)


def _outcome(status: int, latency: float, headers: Mapping[str, str], error: str) -> Outcome:
    """What the target said about itself: the same headers over HTTP and as gRPC metadata."""
    return Outcome(
        status,
        not error,
        latency,
        headers.get(_COLD) == "1",
        zh.parse_server_timing(headers.get(_TIMING)) or -1.0,
        _header_float(headers.get(_INIT)),
        _header_float(headers.get(_AGE)),
        error,
        headers.get(zh.REPLICA, ""),
        headers.get(zh.REVISION, ""),
    )


def _header_float(value: str | None) -> float:
    try:
        return float(value) if value is not None else -1.0
    except ValueError:
        return -1.0


class RestSender:
    """oip-rest, lambda-url and gcf: the same POST /v2/models/{model}/infer, different auth."""

    def __init__(self, target: Target, body: bytes, request_event: Any, concurrency: int) -> None:
        from locust.contrib.fasthttp import FastHttpSession

        self.name = target.name
        self.path = f"/v2/models/{target.model}/infer"
        self.url = target.url + self.path
        self.body = body
        self.session = FastHttpSession(
            target.url,
            request_event,
            user=None,
            insecure=False,
            concurrency=concurrency,
            network_timeout=target.timeout_s,
            connection_timeout=min(target.timeout_s, 10.0),
            max_retries=0,
        )
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **target.headers}
        self.sign: Callable[[], dict[str, str]] | None = None
        if isinstance(target.auth, BearerAuth):
            self.headers["Authorization"] = f"Bearer {target.auth.token()}"
        elif isinstance(target.auth, SigV4Auth):
            self.sign = _sigv4_signer(target.auth, self.url, body, self.headers)

    def send(self) -> Outcome:
        headers = self.sign() if self.sign else self.headers
        start = time.perf_counter()
        with self.session.request(
            "POST", self.path, name=self.name, data=self.body, headers=headers, catch_response=True
        ) as resp:
            latency = time.perf_counter() - start
            status = resp.status_code or 0
            error = ""
            if status == 200:
                # A 200 without outputs is a proxy or an error page, not an inference.
                if b'"outputs"' not in (resp.content or b""):
                    error = "200 without outputs"
            elif status:
                error = f"HTTP {status}: {_error_text(resp.content)}"
            else:
                error = type(resp.error).__name__ + (f": {resp.error}" if str(resp.error) else "")
            if error:
                resp.failure(error)
            h = resp.headers if status else {}
            return _outcome(status, latency, h, error)


def _error_text(content: bytes | None) -> str:
    try:
        message = orjson.loads(content or b"").get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message if message is not None else (content or b"")[:120].decode(errors="replace"))[:200]


def _sigv4_signer(
    auth: SigV4Auth, url: str, body: bytes, headers: dict[str, str]
) -> Callable[[], dict[str, str]]:
    try:
        import botocore.session
        from botocore.auth import SigV4Auth as BotoSigV4
        from botocore.awsrequest import AWSRequest
    except ImportError:
        raise BenchFileError("auth: sigv4 needs botocore: pip install 'zeroserve[aws]'") from None
    credentials = botocore.session.Session().get_credentials()
    if credentials is None:
        raise BenchFileError("auth: sigv4 found no AWS credentials (environment, profile or instance role)")
    signer = BotoSigV4(credentials, auth.service, auth.region)

    def sign() -> dict[str, str]:
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        signer.add_auth(request)  # a fresh timestamp and signature per request
        return dict(request.headers.items())

    return sign


def check_targets(targets: list[Target], payload: dict[str, Any]) -> None:
    """Fail before the run, not inside it, when a target's credentials are missing or the payload cannot
    be sent to it. (Remote workers check again for themselves: they have their own environment.)"""
    for t in targets:
        if isinstance(t.auth, BearerAuth):
            t.auth.token()
        elif isinstance(t.auth, SigV4Auth):
            _sigv4_signer(t.auth, t.url, b"", {})
        if t.kind == "oip-grpc":
            grpc_request(payload, t.model)


def grpc_request(payload: dict[str, Any], model: str) -> Any:
    """The JSON payload as a ModelInferRequest with raw_input_contents, as tritonclient would send it."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import triton_to_np_dtype

    request = service_pb2.ModelInferRequest(model_name=model)
    for tensor in payload["inputs"]:
        dtype = triton_to_np_dtype(tensor["datatype"])
        if dtype is None or tensor["datatype"] == "BYTES":
            raise BenchFileError(
                f"payload: datatype {tensor['datatype']} is not supported for oip-grpc targets"
            )
        array = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    for output in payload.get("outputs", []) or []:
        request.outputs.add(name=output["name"])
    return request


_GEVENT_GRPC = False


def _grpc_with_gevent() -> None:
    """grpcio must hand its I/O to gevent before the first channel, or it blocks the whole hub."""
    global _GEVENT_GRPC
    if not _GEVENT_GRPC:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _GEVENT_GRPC = True


class GrpcSender:
    def __init__(self, target: Target, payload: dict[str, Any], request_event: Any) -> None:
        _grpc_with_gevent()
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.name = target.name
        self.timeout = target.timeout_s
        self.request = grpc_request(payload, target.model)
        self.request_bytes = self.request.ByteSize()
        self.channel = grpc.insecure_channel(
            target.grpc_address(),
            options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
            ],
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.metadata = tuple((k.lower(), v) for k, v in target.headers.items())
        self.request_event = request_event
        self._rpc_error = grpc.RpcError

    def send(self) -> Outcome:
        start = time.perf_counter()
        error, status, length, meta = "", 200, 0, {}
        exception: Exception | None = None
        try:
            response, call = self.stub.ModelInfer.with_call(
                self.request, timeout=self.timeout, metadata=self.metadata or None
            )
            length = response.ByteSize()
            meta = dict(call.trailing_metadata() or ())
            if not response.outputs:
                error = "response without outputs"
        except self._rpc_error as e:
            exception = e
            code = e.code() if hasattr(e, "code") else None
            error = f"gRPC {getattr(code, 'name', 'ERROR')}: {e.details() if hasattr(e, 'details') else e}"
            # Report gRPC failures with the HTTP status a REST target would have given.
            status = _GRPC_TO_HTTP.get(getattr(code, "name", ""), 0)
        latency = time.perf_counter() - start
        if error and exception is None:
            exception = RuntimeError(error)
        self.request_event.fire(
            request_type="grpc",
            name=self.name,
            response_time=latency * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
        return _outcome(status, latency, meta, error[:300])


_GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 503,
    "UNAVAILABLE": 0,  # no answer from the server at all: connection refused or reset
    "DEADLINE_EXCEEDED": 0,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "FAILED_PRECONDITION": 400,
}


def make_sender(target: Target, payload: dict[str, Any], request_event: Any, concurrency: int) -> Any:
    if target.kind == "oip-grpc":
        return GrpcSender(target, payload, request_event)
    return RestSender(target, orjson.dumps(payload), request_event, concurrency)
