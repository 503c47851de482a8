"""The model as managed functions, run locally for real and queried with the unmodified tritonclient:

- the Cloud Function under the real functions-framework server (gunicorn, threads);
- the Lambda handler under the real AWS Lambda Runtime Interface Emulator and Lambda runtime client
  (awslambdaric), behind the function URL emulator;
- the Lambda handler in the function URL emulator's own process;
- the Lambda handler called with function URL events as Lambda delivers them.

Outputs are compared with raw onnxruntime; bad requests are the server's own test cases, and must get
the same answers as from the server.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import importlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from controlplane import BUILD_HINT, default_cache_dir, free_port, read_versions
from runtimeproc import REPO_ROOT, binary_body
from serviceproc import OipProcess, ServiceProcess
from test_runtime import BAD_REQUESTS, X, infer_body, raw
from tritonclient.utils import InferenceServerException
from zeroserve_runtime.protocol.headers import COLD_START, INIT_SECONDS, SERVER_TIMING, parse_server_timing

MODEL = "linear"  # every test_runtime.BAD_REQUESTS case addresses the linear model as "linear"
MAX_BODY = 64 * 1024  # ZEROSERVE_MAX_REQUEST_BYTES for the function processes
BIN = Path(sys.executable).parent


# -- processes ---------------------------------------------------------------------------------------


class FunctionProcess(OipProcess):
    """A function's local server: ready once the function answers /v2/health/ready through it."""

    def __init__(self, what: str, argv: list[str], port: int, log_path: Path, env: dict[str, str]) -> None:
        self.what = what
        super().__init__(argv, port, log_path, env)


class RieProcess(ServiceProcess):
    """aws-lambda-rie running `python -m awslambdaric <handler>`, as a Lambda container image does.
    It has no health endpoint and starts the runtime on the first invocation, so it is never waited for
    here: the function URL emulator in front of it waits for its port."""

    what = "aws-lambda-rie"

    def __init__(self, rie: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        argv = [
            str(rie),
            f"--runtime-interface-emulator-address=127.0.0.1:{self.port}",
            # Its own Runtime API port, 9001 by default, must not collide with anything else running.
            f"--runtime-api-address=127.0.0.1:{free_port()}",
            sys.executable,
            "-m",
            "awslambdaric",
            "zeroserve_runtime.functions.aws_lambda.handler",
        ]
        super().__init__(argv, log_path, env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def function_env(model: Path, cache: Path) -> dict[str, str]:
    return {
        "ZEROSERVE_MODEL_URI": str(model),
        "ZEROSERVE_MODEL_NAME": MODEL,
        "ZEROSERVE_MODEL_SHA256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "ZEROSERVE_CACHE_DIR": str(cache),
        "ZEROSERVE_THREADS": "1",
        "ZEROSERVE_MAX_REQUEST_BYTES": str(MAX_BODY),
    }


def url_emulator(
    backend: str, log_path: Path, env: dict[str, str], rie_url: str | None = None
) -> FunctionProcess:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "zeroserve_runtime.functions.url_emulator",
        f"--port={port}",
        f"--backend={backend}",
    ]
    if rie_url:
        argv.append(f"--rie-url={rie_url}")
    return FunctionProcess(f"function URL emulator ({backend})", argv, port, log_path, env)


def rie_binary() -> Path:
    """The pinned aws-lambda-rie; missing or stale, the test fails with the command that builds it."""
    want = read_versions()["LAMBDA_RIE_VERSION"]
    path = default_cache_dir() / "bin" / "aws-lambda-rie"
    stamp = path.parent / ".aws-lambda-rie.version"
    built = stamp.read_text().strip() if stamp.is_file() else None
    if not os.access(path, os.X_OK) or built != want:
        found = "missing" if not os.access(path, os.X_OK) else f"built at {built}"
        pytest.fail(
            f"aws-lambda-rie {want} (the Lambda Runtime Interface Emulator) is {found} in {path.parent}; "
            f"{BUILD_HINT}",
            pytrace=False,
        )
    return path


# -- HTTP --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    method = "GET" if body is None else "POST"
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


INFER_PATH = f"/v2/models/{MODEL}/infer"


@dataclass
class Target:
    """A running function, and the first two inference answers it gave after it turned ready."""

    proc: FunctionProcess
    first: list[Answer] = field(default_factory=list)

    def start(self) -> Target:
        self.proc.start(timeout=60)
        # Before any test runs: only the very first inference of the process may be the cold one.
        self.first = [request(self.proc.url + INFER_PATH, infer_body()) for _ in range(2)]
        return self

    def post(self, body: bytes, path: str = INFER_PATH, headers: dict[str, str] | None = None) -> Answer:
        return request(self.proc.url + path, body, headers)

    def client(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.proc.address)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcf(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    d = tmp_path_factory.mktemp("gcf")
    port = free_port()
    argv = [
        str(BIN / "functions-framework"),
        "--target=infer",
        f"--source={REPO_ROOT / 'runtimes' / 'gcf' / 'main.py'}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    proc = FunctionProcess("functions-framework", argv, port, d / "log", function_env(models["linear"], d))
    try:
        yield Target(proc).start()
    finally:
        code = proc.stop()
    # gunicorn forks its worker after importing the function: onnxruntime must not have been imported
    # before, or the worker aborts (or hangs) on its way out.
    assert code == 0 and "terminate called" not in proc.log(), f"exit status {code}:\n{proc.tail()}"


@pytest.fixture(scope="module")
def lambda_rie(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    d = tmp_path_factory.mktemp("lambda-rie")
    env = {**function_env(models["linear"], d), "AWS_LAMBDA_FUNCTION_TIMEOUT": "30"}
    rie = RieProcess(rie_binary(), d / "rie.log", env).start(wait_ready=False)
    front = url_emulator("rie", d / "emulator.log", {}, rie_url=rie.url)
    try:
        try:
            target = Target(front).start()
        except RuntimeError as e:  # the emulator's log alone would not say why RIE did not answer
            raise RuntimeError(f"{e}\naws-lambda-rie's log:\n{rie.tail()}") from None
        yield target
    finally:
        front.stop()
        rie.stop()


@pytest.fixture(scope="module")
def lambda_direct(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    d = tmp_path_factory.mktemp("lambda-direct")
    proc = url_emulator("direct", d / "log", function_env(models["linear"], d))
    try:
        yield Target(proc).start()
    finally:
        proc.stop()


@pytest.fixture(scope="module", params=["gcf", "lambda_rie", "lambda_direct"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue(request.param)


# -- the functions over HTTP -------------------------------------------------------------------------


def triton_infer(target: Target, x: np.ndarray, binary: bool, outputs: list[str] | None = None):
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    client = target.client()
    try:
        return client.infer(MODEL, [tensor], outputs=requested)
    finally:
        # tritonclient.http runs on gevent, whose hub is per thread: a client left to the garbage
        # collector may be finalized on another thread than its own, which gevent refuses noisily.
        client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_matches_raw_onnxruntime(target: Target, models, binary: bool) -> None:
    expected = raw(models["linear"], {"x": X})
    result = triton_infer(target, X, binary)
    for name in ("y", "z"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    assert result.get_response()["model_name"] == MODEL
    only_z = triton_infer(target, X, binary, outputs=["z"])
    np.testing.assert_array_equal(only_z.as_numpy("z"), expected["z"])
    assert only_z.as_numpy("y") is None  # only what was asked for


def test_only_the_first_inference_is_cold(target: Target) -> None:
    first, second = target.first
    assert first.status == 200 and second.status == 200, (first, second)
    assert first.headers.get(COLD_START) == "1"
    assert 0 < float(first.headers[INIT_SECONDS]) < 60
    assert COLD_START not in second.headers and INIT_SECONDS not in second.headers
    for answer in (first, second):
        assert parse_server_timing(answer.headers.get(SERVER_TIMING)) is not None
    assert first.json() == second.json()


def test_health_and_metadata(target: Target) -> None:
    with target.client() as client:
        _check_health_and_metadata(client)


def _check_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["y", "z"]
    assert client.get_server_metadata()["name"] == "zeroserve"
    with pytest.raises(InferenceServerException, match="not served here"):
        client.get_model_metadata("nope")
    assert not client.is_model_ready(MODEL, "2")
    # The read-only repository the server metadata advertises, as the server answers it.
    assert "model_repository/readonly" in client.get_server_metadata()["extensions"]
    assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    for change in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException, match="model repository is read-only") as e:
            change(MODEL)
        assert e.value.status() == "400"


BAD = [b[1:] for b in BAD_REQUESTS] + [
    (infer_body(), {}, 404, "not served here", "/v2/models/resnet/infer"),
    (infer_body(), {}, 404, "not served here", f"/v2/models/{MODEL}/versions/7/infer"),
    (infer_body(), {}, 404, "no route", "/v1/predict"),
    (infer_body() + b" " * MAX_BODY, {}, 413, f"limit of {MAX_BODY} bytes", INFER_PATH),
    (b'{"ready": 1}', {}, 400, "'ready' must be true or false", "/v2/repository/index"),
    (b"", {}, 404, "no model repository named 'other'", "/v2/repository/other/index"),
    (b"", {}, 404, "no route", "/metrics"),
]
BAD_IDS = [b[0] for b in BAD_REQUESTS] + [
    "unknown model",
    "unknown version",
    "unknown path",
    "too large",
    "bad index request",
    "unknown repository",
    "no metrics",
]


@pytest.mark.parametrize("case", BAD, ids=BAD_IDS)
def test_bad_requests_get_the_servers_4xx(target: Target, case: tuple) -> None:
    body, headers, status, message, *path = case
    answer = target.post(body, path=path[0] if path else INFER_PATH, headers=headers)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert list(error) == ["error"] and message in error["error"]
    assert target.post(infer_body()).status == 200  # still healthy


def test_concurrent_requests_each_get_their_own_answer(target: Target, models) -> None:
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(12)]
    expected = raw(models["linear"], {"x": np.concatenate(rows)})["y"]
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        results = list(pool.map(lambda r: triton_infer(target, r, True).as_numpy("y"), rows))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i : i + 1])


# -- the Lambda handler with function URL events -----------------------------------------------------


@pytest.fixture(scope="module")
def handler(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """aws_lambda.handler in this process, serving the INT64 model: imported as Lambda's init does."""
    from zeroserve_runtime.functions import core

    env = {**function_env(models["ints"], tmp_path_factory.mktemp("handler")), "ZEROSERVE_MODEL_NAME": "ints"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        core._app = None
        module = sys.modules.get("zeroserve_runtime.functions.aws_lambda")
        module = (
            importlib.reload(module)
            if module
            else importlib.import_module("zeroserve_runtime.functions.aws_lambda")
        )
        try:
            yield module.handler
        finally:
            core._app = None


def url_event(
    method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> dict:
    """A function URL event as Lambda delivers it (payload format 2.0; AWS's documented example)."""
    headers = {"host": "abcdefg.lambda-url.us-east-1.on.aws", "user-agent": "tritonclient", **(headers or {})}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdefg",
            "domainName": "abcdefg.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefg",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "tritonclient",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1795867200000,
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        if headers.get("content-type", "").startswith("application/json"):
            event["body"] = body.decode()
        else:  # binary bodies reach the function base64-encoded
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


INT_FEEDS = {
    "ids": np.array([[101, 2023, 102], [101, 7, 102]], dtype=np.int64),
    "mask": np.ones((2, 3), np.int64),
}


def binary_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    dtypes = {"INT64": "<i8", "FP64": "<f8"}
    out, offset = {}, header_length
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[offset : offset + size], dtype=dtypes[o["datatype"]]).reshape(
            o["shape"]
        )
        offset += size
    assert offset == len(body)
    return out


def test_handler_answers_a_binary_function_url_event(handler: Callable, models) -> None:
    body, header_length = binary_body(INT_FEEDS)
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(header_length),
    }
    first = handler(url_event("POST", "/v2/models/ints/infer", body, headers), None)
    second = handler(url_event("POST", "/v2/models/ints/infer", body, headers), None)
    for response in (first, second):
        assert set(response) == {"statusCode", "headers", "body", "isBase64Encoded"}
        assert response["statusCode"] == 200 and response["isBase64Encoded"] is True
        assert response["headers"]["content-type"] == "application/octet-stream"
        assert all(isinstance(v, str) for v in response["headers"].values())
        outputs = binary_outputs(
            base64.b64decode(response["body"]), int(response["headers"]["inference-header-content-length"])
        )
        expected = raw(models["ints"], INT_FEEDS)
        np.testing.assert_array_equal(outputs["sum"], expected["sum"])
        np.testing.assert_array_equal(outputs["mean"], expected["mean"])
    assert first["headers"][COLD_START] == "1" and float(first["headers"][INIT_SECONDS]) > 0
    assert COLD_START not in second["headers"]


def test_handler_answers_json_and_metadata_events(handler: Callable) -> None:
    body = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": n, "shape": [2, 3], "datatype": "INT64", "data": a.tolist()}
                for n, a in INT_FEEDS.items()
            ],
        }
    ).encode()
    response = handler(
        url_event("POST", "/v2/models/ints/infer", body, {"content-type": "application/json"}), None
    )
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is False
    answer = json.loads(response["body"])
    assert answer["id"] == "r1" and answer["model_name"] == "ints"
    assert {o["name"]: o["data"] for o in answer["outputs"]}["sum"] == [102, 2024, 103, 102, 8, 103]
    meta = handler(url_event("GET", "/v2/models/ints"), None)  # no body: the event has no "body" key
    assert meta["statusCode"] == 200 and json.loads(meta["body"])["name"] == "ints"


def test_handler_refuses_what_is_not_a_function_url_request(handler: Callable) -> None:
    not_url = handler({"key": "value"}, None)  # e.g. `aws lambda invoke` with a test event
    assert not_url["statusCode"] == 400 and "payload format 2.0" in json.loads(not_url["body"])["error"]
    event = url_event("POST", "/v2/models/ints/infer", b"", {"content-type": "application/octet-stream"})
    event.update(body="not base64!", isBase64Encoded=True)
    bad = handler(event, None)
    assert bad["statusCode"] == 400 and "not valid base64" in json.loads(bad["body"])["error"]


# -- what the functions import -----------------------------------------------------------------------


def _closure(requirements: Path) -> set[str]:
    """The distributions a requirements file installs, with their dependencies, as installed here."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pending = [
        Requirement(line).name
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    seen: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            deps = requires(name) or []
        except PackageNotFoundError:
            continue
        for dep in map(Requirement, deps):
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                pending.append(dep.name)
    return seen


@pytest.mark.parametrize(
    ("module", "requirements", "provided"),
    [
        ("gcf", "runtimes/gcf/requirements.txt", set()),
        # The Lambda base image brings its runtime client; the handler imports nothing of it.
        ("aws_lambda", "runtimes/lambda/requirements.txt", set()),
    ],
)
def test_functions_import_only_what_their_requirements_install(
    module: str, requirements: str, provided: set[str], models, tmp_path: Path
) -> None:
    """The deployment guides install these short lists, not the zeroserve wheel's own dependencies (the
    operator's and the load generator's); a new import the lists lack would fail only once deployed."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    # What the interpreter loads on its own (site hooks such as setuptools' .pth) is not the function's.
    code = (
        "import sys; before = set(sys.modules); "
        f"import zeroserve_runtime.functions.{module}; from zeroserve_runtime.functions.core import get_app; "
        "get_app(); print(' '.join(set(sys.modules) - before))"
    )
    env = {**os.environ, **function_env(models["linear"], tmp_path)}
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    top = (
        {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"zeroserve", "zeroserve_runtime"}
    )
    dists = packages_distributions()
    allowed = _closure(REPO_ROOT / requirements) | provided
    missing = {
        m: dists[m] for m in top if m in dists and not {canonicalize_name(d) for d in dists[m]} & allowed
    }
    assert not missing, f"{module} imports modules that {requirements} does not install: {missing}"


# -- the function URL emulator's own mapping ---------------------------------------------------------


def test_emulator_builds_function_url_events_as_lambda_does() -> None:
    from zeroserve_runtime.functions.url_emulator import build_event

    scope = {
        "method": "POST",
        "path": "/v2/models/linear/infer",
        "query_string": b"a=1&a=2&b=",
        "http_version": "1.1",
        "client": ("10.0.0.9", 51000),
        "headers": [
            (b"Host", b"abc.lambda-url.eu-west-1.on.aws"),
            (b"Content-Type", b"application/octet-stream"),
            (b"X-Many", b"1"),
            (b"X-Many", b"2"),
            (b"Cookie", b"s=1; t=2"),
        ],
    }
    event = build_event(scope, b"\x00\x01binary")
    assert event["version"] == "2.0" and event["rawPath"] == scope["path"]
    assert event["headers"]["x-many"] == "1,2" and "cookie" not in event["headers"]
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["rawQueryString"] == "a=1&a=2&b=" and event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["requestContext"]["http"] == {
        "method": "POST",
        "path": scope["path"],
        "protocol": "HTTP/1.1",
        "sourceIp": "10.0.0.9",
        "userAgent": "",
    }
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\x00\x01binary"
    no_body = build_event({**scope, "method": "GET", "headers": []}, b"")
    assert "body" not in no_body and no_body["isBase64Encoded"] is False


def test_emulator_maps_function_responses_as_function_urls_do() -> None:
    from zeroserve_runtime.functions.url_emulator import FunctionError, http_response

    status, headers, body = http_response(
        json.dumps(
            {"statusCode": 201, "headers": {"x-a": "b"}, "body": "aGk=", "isBase64Encoded": True}
        ).encode()
    )
    assert (status, headers, body) == (201, [(b"x-a", b"b")], b"hi")
    # Any other JSON is returned as a 200 application/json body.
    assert http_response(b'{"hello": 1}') == (200, [(b"content-type", b"application/json")], b'{"hello": 1}')
    # What the runtime client reports for a failed invocation becomes the function URL's 502.
    with pytest.raises(FunctionError, match=r"Runtime\.UnmarshalError"):
        http_response(b'{"errorMessage": "bad", "errorType": "Runtime.UnmarshalError", "stackTrace": []}')


def test_missing_rie_fails_naming_the_build_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSERVE_CACHE_DIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"hack/build-control-plane\.sh"):
        rie_binary()
