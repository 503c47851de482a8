"""The ONNX Runtime server over real HTTP and gRPC, with the unmodified tritonclient as the client, and
outputs compared with raw onnxruntime."""

from __future__ import annotations

import concurrent.futures
import json
import re
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from runtimeproc import RuntimeProcess, linear_model, lookup_model, shared_model
from tritonclient.utils import InferenceServerException


def raw(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def linear(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    with RuntimeProcess(models["linear"], tmp_path_factory.mktemp("linear") / "log", name="linear") as proc:
        yield proc
        print(proc.tail())


@pytest.fixture(scope="module")
def ints(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    with RuntimeProcess(models["ints"], tmp_path_factory.mktemp("ints") / "log", name="ints") as proc:
        yield proc


X = np.array([[1, 2, 3, 4], [-1, 0.5, 0, 2], [0, 0, 0, 0]], dtype=np.float32)


def http_infer(
    proc: RuntimeProcess, feeds: dict[str, np.ndarray], binary: bool, outputs: list[str] | None = None
):
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), _datatype(value))
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    # Closed here, in its own thread: tritonclient.http runs on gevent, whose hub is per thread, and a
    # client left to the garbage collector may be finalized on another thread, which gevent refuses.
    with httpclient.InferenceServerClient(proc.address) as client:
        return client.infer(proc.name, inputs, outputs=requested)


def grpc_infer(proc: RuntimeProcess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None):
    inputs = []
    for name, value in feeds.items():
        tensor = grpcclient.InferInput(name, list(value.shape), _datatype(value))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    with grpcclient.InferenceServerClient(proc.grpc_address) as client:
        return client.infer(proc.name, inputs, outputs=requested)


def _datatype(value: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(value.dtype)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_matches_raw_onnxruntime(linear: RuntimeProcess, models, binary: bool) -> None:
    expected = raw(models["linear"], {"x": X})
    result = http_infer(linear, {"x": X}, binary)
    for name in ("y", "z"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    assert result.get_response()["model_name"] == "linear"


def test_tritonclient_grpc_matches_raw_onnxruntime(linear: RuntimeProcess, models) -> None:
    expected = raw(models["linear"], {"x": X})
    result = grpc_infer(linear, {"x": X}, outputs=["z"])
    np.testing.assert_array_equal(result.as_numpy("z"), expected["z"])
    assert result.as_numpy("y") is None  # only what was asked for


def test_int64_inputs_and_mixed_output_types(ints: RuntimeProcess, models) -> None:
    feeds = {
        "ids": np.array([[101, 2023, 102], [101, 7, 102]], dtype=np.int64),
        "mask": np.ones((2, 3), np.int64),
    }
    expected = raw(models["ints"], feeds)
    for result in (http_infer(ints, feeds, False), http_infer(ints, feeds, True), grpc_infer(ints, feeds)):
        np.testing.assert_array_equal(result.as_numpy("sum"), expected["sum"])
        np.testing.assert_array_equal(result.as_numpy("mean"), expected["mean"])


def test_inputs_must_agree_on_the_batch_dimension(ints: RuntimeProcess) -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
                {"name": "mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
            ]
        }
    ).encode()
    status, payload, _ = post(ints, body, path="/v2/models/ints/infer")
    assert status == 400 and "disagree on the batch dimension" in json.loads(payload)["error"]


def test_metadata_and_health_through_both_clients(linear: RuntimeProcess) -> None:
    with httpclient.InferenceServerClient(linear.address) as http:
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("linear")
        meta = http.get_model_metadata("linear")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["y", "z"]
        assert http.get_server_metadata()["name"] == "zeroserve"
    with grpcclient.InferenceServerClient(linear.grpc_address) as grpc:
        assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready("linear")
        gmeta = grpc.get_model_metadata("linear", as_json=True)
        assert gmeta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}
        with pytest.raises(InferenceServerException, match="not served here"):
            grpc.get_model_metadata("nope")


def test_repository_index_through_both_clients_and_load_unload_refused(linear: RuntimeProcess) -> None:
    served = {"name": "linear", "version": "1", "state": "READY"}
    with httpclient.InferenceServerClient(linear.address) as http:
        assert "model_repository/readonly" in http.get_server_metadata()["extensions"]
        assert http.get_model_repository_index() == [served]
        for change in (http.load_model, http.unload_model):
            with pytest.raises(InferenceServerException, match="model repository is read-only") as e:
                change("linear")
            assert e.value.status() == "400"
    with grpcclient.InferenceServerClient(linear.grpc_address) as grpc:
        assert grpc.get_model_repository_index(as_json=True) == {"models": [served]}
        for change in (grpc.load_model, grpc.unload_model):
            with pytest.raises(InferenceServerException, match="serves 'linear'") as e:
                change("other")
            assert e.value.status() == "StatusCode.FAILED_PRECONDITION"


@pytest.mark.parametrize(
    ("path", "body", "status", "answer"),
    [
        (
            "/v2/repository/index",
            b'{"ready": true}',
            200,
            [{"name": "linear", "version": "1", "state": "READY"}],
        ),
        ("/v2/repository/index", b'{"ready": "yes"}', 400, "'ready' must be true or false"),
        ("/v2/repository/index", b"{not json", 400, "not valid JSON"),
        ("/v2/repository/index", b"[]", 400, "must be a JSON object"),
        ("/v2/repository/elsewhere/index", b"", 404, "no model repository named 'elsewhere'"),
        ("/v2/repository/models/linear/unload", b"{}", 400, "read-only"),
    ],
)
def test_repository_requests_over_raw_http(
    linear: RuntimeProcess, path: str, body: bytes, status: int, answer: object
) -> None:
    got, payload, _ = post(linear, body, path=path)
    assert got == status
    if status == 200:
        assert json.loads(payload) == answer
    else:
        assert answer in json.loads(payload)["error"]


def post(
    proc: RuntimeProcess, body: bytes, path: str = "/v2/models/linear/infer", headers: dict | None = None
):
    request = urllib.request.Request(proc.url + path, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def infer_body(**overrides: object) -> bytes:
    item = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    item.update(overrides)
    return json.dumps({"inputs": [item]}).encode()


def binary_body(declared_size: int, actual: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared_size},
                }
            ]
        }
    ).encode()
    return header + actual, {"Inference-Header-Content-Length": str(len(header))}


FOUR_FLOATS = struct.pack("<4f", 1, 2, 3, 4)
BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("body is not an object", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no inputs", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    (
        "missing input",
        json.dumps({"inputs": [{"name": "w", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode(),
        {},
        400,
        "unknown input 'w'",
    ),
    ("shape vs data length", infer_body(data=[1, 2, 3]), {}, 400, "needs 4 values, got 3"),
    ("negative dim", infer_body(shape=[-1, 4]), {}, 400, "negative dimension"),
    ("absurd dims", infer_body(shape=[10**12, 4]), {}, 400, "absurdly many elements"),
    ("wrong rank", infer_body(shape=[4], data=[1, 2, 3, 4]), {}, 400, "rank 1"),
    ("rank beyond any model", infer_body(shape=[1] * 40, data=[1]), {}, 400, "rank 40 is more than 32"),
    ("empty but absurd", infer_body(shape=[0, 2**62, 2**62], data=[]), {}, 400, "absurdly large"),
    ("wrong fixed dim", infer_body(shape=[2, 2]), {}, 400, "does not fit"),
    ("unknown datatype", infer_body(datatype="FP128"), {}, 400, "unknown datatype 'FP128'"),
    ("wrong datatype", infer_body(datatype="INT32"), {}, 400, "the model takes FP32"),
    ("non-numeric data", infer_body(data=["a", "b", "c", "d"]), {}, 400, "must be numeric"),
    ("ragged data", infer_body(data=[[1, 2], [3]]), {}, 400, "ragged"),
    ("truncated binary", *binary_body(16, FOUR_FLOATS[:10]), 400, "truncated"),
    ("binary size vs shape", *binary_body(12, FOUR_FLOATS[:12]), 400, "needs 16 bytes"),
    (
        "header length beyond body",
        infer_body(),
        {"Inference-Header-Content-Length": "100000"},
        400,
        "beyond the body",
    ),
    (
        "header length not a number",
        infer_body(),
        {"Inference-Header-Content-Length": "ten"},
        400,
        "must be an integer",
    ),
    (
        "unknown output",
        json.dumps({"inputs": json.loads(infer_body())["inputs"], "outputs": [{"name": "logits"}]}).encode(),
        {},
        400,
        "unknown output 'logits'",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    linear: RuntimeProcess, body: bytes, headers: dict, status: int, message: str
) -> None:
    got, payload, _ = post(linear, body, headers=headers)
    assert got == status, payload
    assert message in json.loads(payload)["error"]
    assert post(linear, infer_body())[0] == 200  # still healthy


def test_large_json_bodies_flat_or_nested_answer_as_binary_and_bad_ones_get_a_4xx(
    linear: RuntimeProcess,
) -> None:
    """Bodies this large take the typed JSON decoder (json_tensors), not orjson's Python numbers."""
    x = np.random.default_rng(3).standard_normal((300, 4)).astype(np.float32)
    expected = http_infer(linear, {"x": x}, binary=True).as_numpy("y")
    for data in (x.ravel().tolist(), x.tolist()):
        status, payload, _ = post(linear, infer_body(shape=[300, 4], data=data))
        assert status == 200, payload
        y = json.loads(payload)["outputs"][0]
        np.testing.assert_array_equal(np.array(y["data"], np.float32).reshape(y["shape"]), expected)
    rows = x.tolist()
    for data, message in (
        ([*rows[:-1], rows[-1][:3]], "ragged"),
        ([*rows[:-1], [*rows[-1][:3], [rows[-1][3]]]], "ragged"),
        ([*rows[:-1], ["a", 1, 2, 3]], "must be numeric"),
        (rows[:-1], "needs 1200 values, got 1196"),
    ):
        status, payload, _ = post(linear, infer_body(shape=[300, 4], data=data))
        assert status == 400 and message in json.loads(payload)["error"], payload
    nan = infer_body(shape=[300, 4], data=x.ravel().tolist()).replace(b"]}]}", b", NaN]}]}")
    status, payload, _ = post(linear, nan)
    assert status == 400 and "not valid JSON" in json.loads(payload)["error"]


def test_unknown_model_is_404_and_oversized_body_is_413(models, tmp_path: Path) -> None:
    with RuntimeProcess(models["linear"], tmp_path / "log", name="linear", max_request_bytes=4096) as proc:
        status, payload, _ = post(proc, infer_body(), path="/v2/models/resnet/infer")
        assert status == 404 and "not served here" in json.loads(payload)["error"]
        status, payload, _ = post(proc, infer_body(data=[1.0] * 4, shape=[1, 4]) + b" " * 5000)
        assert status == 413 and "limit of 4096 bytes" in json.loads(payload)["error"]
        assert post(proc, infer_body())[0] == 200


def test_cold_start_is_accounted_by_phase(linear: RuntimeProcess) -> None:
    text = linear.metrics()
    # Observed once per process, so each phase's _sum is this process's figure.
    sums = r'^zeroserve_cold_start_seconds_sum\{model="linear",phase="(\w+)"\} (\S+)$'
    phases = {m[1]: float(m[2]) for m in re.finditer(sums, text, re.M)}
    assert set(phases) == {"import", "fetch", "load", "warmup", "total"}
    assert all(0 <= v <= phases["total"] for v in phases.values())
    # Model loading overlaps the import, but each is a part of the way to ready.
    assert phases["fetch"] + phases["load"] + phases["warmup"] < phases["total"]
    assert re.search(r'^zeroserve_model_load_seconds\{model="linear"\} ', text, re.M)
    # A histogram observed once per process, so Prometheus can sum it across pods that scaled away.
    counts = re.findall(
        r'^zeroserve_cold_start_seconds_count\{model="linear",phase="\w+"\} (\S+)$', text, re.M
    )
    assert counts == ["1.0"] * 5


def test_process_start_is_read_to_the_clock_tick() -> None:
    """Cold-start figures count from the process's start; a start read off by a fraction of a second
    (as whole-second btime arithmetic is) would shift every one of them."""
    import subprocess
    import sys
    import time

    code = "from zeroserve_runtime.coldstart import process_start_time; print(process_start_time())"
    for _ in range(3):
        before = time.time()
        started = float(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
        after = time.time()
        # The kernel counts the start in 10 ms ticks, rounded down.
        assert before - 0.011 <= started <= after, (before, started, after)


def test_grpc_answers_carry_timing_and_the_first_its_cold_start(models, tmp_path: Path) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from zeroserve_runtime.protocol.headers import (
        COLD_START,
        INIT_SECONDS,
        SERVER_TIMING,
        parse_server_timing,
    )

    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "FP32"
    tensor.shape.extend(X.shape)
    request.raw_input_contents.append(X.tobytes())
    with RuntimeProcess(models["linear"], tmp_path / "log", name="linear") as proc:
        with grpc.insecure_channel(proc.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            first = dict(stub.ModelInfer.with_call(request)[1].trailing_metadata())
            second = dict(stub.ModelInfer.with_call(request)[1].trailing_metadata())
    assert first[COLD_START] == "1" and float(first[INIT_SECONDS]) > 0
    assert COLD_START not in second and INIT_SECONDS not in second
    assert all(parse_server_timing(m[SERVER_TIMING]) > 0 for m in (first, second))


def test_answers_name_the_replica_and_revision_only_where_the_platform_names_them(
    models, tmp_path: Path, linear: RuntimeProcess
) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from zeroserve_runtime.protocol.headers import REPLICA, REVISION

    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "FP32"
    tensor.shape.extend(X.shape)
    request.raw_input_contents.append(X.tobytes())
    # As Knative runs it: K_REVISION set, and the pod's name as its HOSTNAME.
    proc = RuntimeProcess(models["linear"], tmp_path / "log", name="linear")
    proc.env.update(K_REVISION="linear-00002", HOSTNAME="linear-00002-deployment-7d9f-x2x4q")
    with proc:
        status, _, rest = post(proc, infer_body())
        with grpc.insecure_channel(proc.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            meta = dict(stub.ModelInfer.with_call(request)[1].trailing_metadata())
    assert status == 200
    for headers in ({k.lower(): v for k, v in rest.items()}, meta):
        assert headers[REVISION] == "linear-00002"
        assert headers[REPLICA] == "linear-00002-deployment-7d9f-x2x4q"
    # Run by hand (no K_REVISION): the machine's name is not handed to clients.
    status, _, anywhere = post(linear, infer_body())
    assert status == 200 and not {REPLICA, REVISION} & {k.lower() for k in anywhere}


def test_a_call_the_client_gives_up_on_counts_as_cancelled_not_error(tmp_path: Path) -> None:
    import time

    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    feeds = {
        "input_ids": np.full((32, 128), 1000, dtype=np.int64),
        "attention_mask": np.ones((32, 128), dtype=np.int64),
        "token_type_ids": np.zeros((32, 128), dtype=np.int64),
    }
    request = service_pb2.ModelInferRequest(model_name="minilm")
    for name, array in feeds.items():
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, "INT64"
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(array.tobytes())
    with RuntimeProcess(shared_model("minilm-l6.onnx"), tmp_path / "log", name="minilm") as proc:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(proc.grpc_address, options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=0.1)  # a batch of 32 x 128 tokens takes far longer
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stub.ModelInfer(request)  # the server is still serving
        pattern = r'^zeroserve_requests_total\{model="minilm",outcome="(\w+)",protocol="grpc"\} (\S+)'
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            outcomes = {m[1]: float(m[2]) for m in re.finditer(pattern, proc.metrics(), re.M)}
            if "cancelled" in outcomes:
                break
            time.sleep(0.05)
    assert outcomes == {"cancelled": 1, "success": 1}, outcomes


def test_requests_are_counted_by_outcome(linear: RuntimeProcess) -> None:
    post(linear, infer_body())
    post(linear, infer_body(data=[1]))
    text = linear.metrics()
    assert re.search(
        r'^zeroserve_requests_total\{model="linear",outcome="success",protocol="rest"\} [1-9]', text, re.M
    )
    assert re.search(
        r'^zeroserve_requests_total\{model="linear",outcome="invalid",protocol="rest"\} [1-9]', text, re.M
    )


def test_a_request_alone_in_the_server_runs_without_the_hop_to_an_inference_thread(
    linear: RuntimeProcess,
) -> None:
    """One request after another on a model that runs in microseconds: after the first, which tells the
    server how long runs take, each runs in the event loop's thread, over REST and gRPC alike."""

    def inlined() -> float:
        found = re.search(
            r'^zeroserve_inline_inferences_total\{model="linear"\} (\S+)', linear.metrics(), re.M
        )
        return float(found[1]) if found else 0.0

    before = inlined()
    for _ in range(10):
        assert post(linear, infer_body())[0] == 200
        grpc_infer(linear, {"x": np.ones((1, 4), dtype=np.float32)})
    # Not all 20: a run the machine happened to stall for may send the next few to the thread.
    assert inlined() - before >= 10


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-inference-thread", "two-parallel-inferences"])
def test_concurrent_requests_are_batched_and_each_gets_its_rows(
    models, tmp_path: Path, parallel: int
) -> None:
    settings = {"max_batch_size": 16, "max_queue_delay_ms": 50, "parallel_inferences": parallel}
    with RuntimeProcess(models["linear"], tmp_path / "log", name="linear", **settings) as proc:
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(24)]
        expected = raw(models["linear"], {"x": np.concatenate(rows)})["y"]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda r: http_infer(proc, {"x": r}, True).as_numpy("y"), rows))
        for i, got in enumerate(results):
            np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-6)
        text = proc.metrics()
        count = float(re.search(r'^zeroserve_batch_size_count\{model="linear"\} (\S+)', text, re.M)[1])
        total = float(re.search(r'^zeroserve_batch_size_sum\{model="linear"\} (\S+)', text, re.M)[1])
        assert total == 24  # every request in exactly one batch
        assert count < total, f"no request was merged: {count} batches for {total} requests"


def test_padded_batches_run_at_one_shape_and_each_caller_gets_its_rows(models, tmp_path: Path) -> None:
    """--batch-padding on (auto turns it on for CUDA only): every run has --max-batch-size rows, zero rows
    making up the difference, and nobody gets a padding row back."""
    settings = {"max_batch_size": 8, "max_queue_delay_ms": 30, "batch_padding": "on"}
    with RuntimeProcess(models["linear"], tmp_path / "log", name="linear", **settings) as proc:
        assert "batching up to 8, padded to 8" in proc.log()
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(13)]
        expected = raw(models["linear"], {"x": np.concatenate(rows)})["y"]
        with concurrent.futures.ThreadPoolExecutor(13) as pool:
            results = list(pool.map(lambda r: http_infer(proc, {"x": r}, True).as_numpy("y"), rows))
        for i, got in enumerate(results):
            assert got.shape == (1, 3)
            np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-6)
        lone = http_infer(proc, {"x": rows[5]}, True).as_numpy("y")  # a run of its own, padded too
        np.testing.assert_allclose(lone, expected[5:6], rtol=1e-6)
        text = proc.metrics()
        runs = float(re.search(r'^zeroserve_batch_size_count\{model="linear"\} (\S+)', text, re.M)[1])
        padded = float(
            re.search(r'^zeroserve_batch_padding_rows_total\{model="linear"\} (\S+)', text, re.M)[1]
        )
        # 14 requests of one row each in `runs` runs of 8 rows: the rest of every run was padding.
        assert padded == 8 * runs - 14, (runs, padded)


def test_batch_padding_is_for_the_gpu_unless_asked(models, tmp_path: Path) -> None:
    from zeroserve_runtime.model import OnnxModel, padded_rows
    from zeroserve_runtime.settings import RuntimeSettings

    model = OnnxModel("linear", models["linear"], threads=1)  # on the CPU provider
    fixed = OnnxModel("fixed", linear_model(tmp_path / "fixed.onnx", batch=2), threads=1)

    def rows(m: OnnxModel, **over: object) -> int:
        return padded_rows(RuntimeSettings(model_uri="x", **over), m)

    assert rows(model, max_batch_size=8) == 0  # auto, on CPU
    assert rows(model, max_batch_size=8, batch_padding="on") == 8
    assert rows(model, max_batch_size=1, batch_padding="on") == 0  # no batching, nothing to pad
    assert rows(fixed, max_batch_size=8, batch_padding="on") == 0  # a fixed batch dimension cannot batch
    model.provider = "CUDAExecutionProvider"  # what auto looks at: the provider the session runs on
    assert rows(model, max_batch_size=8) == 8 and rows(model, max_batch_size=8, batch_padding="off") == 0


def test_a_bad_request_in_a_batch_fails_alone(tmp_path: Path) -> None:
    model = lookup_model(tmp_path / "lookup.onnx")
    with RuntimeProcess(
        model, tmp_path / "log", name="lookup", max_batch_size=8, max_queue_delay_ms=100
    ) as proc:
        indices = [1, 2, 3, 99, 4, 5, 6, 7]  # 99 is past the table: onnxruntime fails on it

        def one(i: int) -> tuple[int, dict]:
            body = json.dumps({"inputs": [{"name": "idx", "shape": [1], "datatype": "INT64", "data": [i]}]})
            status, payload, _ = post(proc, body.encode(), path="/v2/models/lookup/infer")
            return status, json.loads(payload)

        with concurrent.futures.ThreadPoolExecutor(len(indices)) as pool:
            answers = dict(zip(indices, pool.map(one, indices), strict=True))
        status, payload = answers.pop(99)
        assert status == 400 and "cannot run on this input" in payload["error"]
        for i, (status, payload) in answers.items():
            assert status == 200, payload
            assert payload["outputs"][0]["data"] == [4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3]
        text = proc.metrics()
        merged = float(re.search(r'^zeroserve_batch_size_sum\{model="lookup"\} (\S+)', text, re.M)[1])
        # Requests counted more often than sent: the failed batch was rerun request by request.
        assert merged > len(indices), "no batch failed and was rerun: the path under test did not run"


def test_sha256_mismatch_refuses_to_start(models, tmp_path: Path) -> None:
    proc = RuntimeProcess(models["linear"], tmp_path / "log", model_sha256="0" * 64).start(wait_ready=False)
    assert proc.process is not None and proc.process.wait(timeout=60) == 1
    assert "SHA-256" in proc.log() and "refusing to serve it" in proc.log()


def test_model_fetched_over_http_with_its_sha256(models, tmp_path: Path) -> None:
    import functools
    import hashlib
    import http.server
    import threading

    directory = models["linear"].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        digest = hashlib.sha256(models["linear"].read_bytes()).hexdigest()
        uri = f"http://127.0.0.1:{httpd.server_address[1]}/linear.onnx"
        with RuntimeProcess(uri, tmp_path / "log", name="linear", model_sha256=digest) as proc:
            np.testing.assert_array_equal(
                http_infer(proc, {"x": X}, True).as_numpy("y"), raw(models["linear"], {"x": X})["y"]
            )
        assert list((tmp_path / "cache").rglob("linear.onnx"))
    finally:
        httpd.shutdown()


class TricklingModelSource:
    """A loopback HTTP server that sends the model a few bytes at a time, and holds back its second half
    until `release()`: the runtime is caught mid-load for as long as the test needs."""

    def __init__(self, model: Path) -> None:
        import http.server
        import threading

        data = model.read_bytes()
        self.half_sent = threading.Event()
        self.released = threading.Event()
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                half = len(data) // 2
                try:
                    for i in range(0, len(data), 64):
                        if i >= half and not source.half_sent.is_set():
                            source.half_sent.set()
                            source.released.wait(60)
                        self.wfile.write(data[i : i + 64])
                        self.wfile.flush()
                        time.sleep(0.001)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a runtime stopped mid-load hangs up

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}/{model.name}"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _until(check, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := check():
                return result
        except (OSError, InferenceServerException):
            pass
        assert time.monotonic() < deadline, f"{check} never held within {timeout}s"
        time.sleep(0.02)


def test_not_ready_on_either_transport_while_the_model_loads(models, tmp_path: Path) -> None:
    source = TricklingModelSource(models["linear"])
    proc = RuntimeProcess(source.uri, tmp_path / "log", name="linear")
    try:
        proc.start(wait_ready=False)
        assert source.half_sent.wait(30), proc.tail()
        _until(lambda: urllib.request.urlopen(proc.url + "/v2/health/live", timeout=1).status == 200)
        with grpcclient.InferenceServerClient(proc.grpc_address) as grpc:
            _until(grpc.is_server_live)
            # Half the model has arrived and the rest is held back: the load cannot have finished.
            assert not grpc.is_server_ready() and not grpc.is_model_ready("linear")
            assert grpc.get_model_repository_index(as_json=True)["models"][0]["state"] == "LOADING"
            with pytest.raises(InferenceServerException, match="still loading") as e:
                grpc_infer(proc, {"x": X})
            assert e.value.status() == "StatusCode.UNAVAILABLE"
        status, payload, headers = proc_get(proc, "/v2/health/ready")
        assert (status, json.loads(payload)) == (503, {"ready": False})
        status, payload, headers = post(proc, infer_body())
        assert status == 503 and "still loading" in json.loads(payload)["error"]
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"
        with httpclient.InferenceServerClient(proc.address) as http:
            assert http.is_server_live() and not http.is_server_ready()
            assert http.get_model_repository_index()[0]["state"] == "LOADING"
        assert json.loads(post(proc, b'{"ready": true}', path="/v2/repository/index")[1]) == []
        assert proc.process is not None and proc.process.poll() is None

        source.release()
        proc.wait_ready(60)
        assert proc_get(proc, "/v2/health/ready")[0] == 200
        with grpcclient.InferenceServerClient(proc.grpc_address) as grpc:
            assert grpc.is_server_ready() and grpc.is_model_ready("linear")
        np.testing.assert_array_equal(
            grpc_infer(proc, {"x": X}).as_numpy("y"), raw(models["linear"], {"x": X})["y"]
        )
    finally:
        source.close()
        proc.stop()


def test_sigterm_while_the_model_loads_exits_at_once(models, tmp_path: Path) -> None:
    source = TricklingModelSource(models["linear"])
    proc = RuntimeProcess(source.uri, tmp_path / "log", name="linear")
    try:
        proc.start(wait_ready=False)
        assert source.half_sent.wait(30), proc.tail()
        _until(lambda: urllib.request.urlopen(proc.url + "/v2/health/live", timeout=1).status == 200)
        started = time.monotonic()
        assert proc.stop(grace=10) == 0, proc.tail()
        assert time.monotonic() - started < 5
        assert "stopping while the model is still loading" in proc.log()
    finally:
        source.close()
        proc.stop()


def proc_get(proc: RuntimeProcess, path: str):  # type: ignore[no-untyped-def]
    try:
        with urllib.request.urlopen(proc.url + path, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    model = shared_model("efficientnet-lite0.onnx")
    with RuntimeProcess(model, tmp_path_factory.mktemp("effnet") / "log", name="efficientnet") as proc:
        yield proc


def test_efficientnet_over_every_protocol_equals_raw(efficientnet: RuntimeProcess) -> None:
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    expected = raw(shared_model("efficientnet-lite0.onnx"), {"input": image})["logits"]
    for got in (
        http_infer(efficientnet, {"input": image}, False).as_numpy("logits"),
        http_infer(efficientnet, {"input": image}, True).as_numpy("logits"),
        grpc_infer(efficientnet, {"input": image}).as_numpy("logits"),
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert got.argmax() == expected.argmax()


def test_minilm_with_three_int64_inputs_equals_raw(tmp_path: Path) -> None:
    model = shared_model("minilm-l6.onnx")
    rng = np.random.default_rng(1)
    feeds = {
        "input_ids": rng.integers(100, 30000, size=(2, 16), dtype=np.int64),
        "attention_mask": np.ones((2, 16), dtype=np.int64),
        "token_type_ids": np.zeros((2, 16), dtype=np.int64),
    }
    expected = raw(model, feeds)["last_hidden_state"]
    with RuntimeProcess(model, tmp_path / "log", name="minilm") as proc:
        for got in (
            http_infer(proc, feeds, True).as_numpy("last_hidden_state"),
            grpc_infer(proc, feeds).as_numpy("last_hidden_state"),
        ):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _post_status(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Message]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            r.read()
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers


def _binary_request(feeds: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    inputs = []
    for name, value in feeds.items():
        tensor = httpclient.InferInput(name, list(value.shape), _datatype(value))
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(inputs)
    return body, {"Inference-Header-Content-Length": str(header_length)}


def test_overload_gets_503_with_retry_after_and_memory_stays_flat(tmp_path: Path) -> None:
    model = shared_model("efficientnet-lite0.onnx")
    image = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
    body, headers = _binary_request({"input": image})
    with RuntimeProcess(model, tmp_path / "log", name="efficientnet", max_concurrency=2) as proc:
        url = f"{proc.url}/v2/models/efficientnet/infer"

        def storm(n: int) -> list[tuple[int, Message]]:
            with concurrent.futures.ThreadPoolExecutor(24) as pool:
                return list(pool.map(lambda _: _post_status(url, body, headers), range(n)))

        storm(200)
        before = proc.rss_mb()
        answers = storm(1200)
        after = proc.rss_mb()
        statuses = [s for s, _ in answers]
        assert set(statuses) <= {200, 503}, set(statuses)
        assert statuses.count(503) > 0 and statuses.count(200) > 0
        assert all(h.get("Retry-After") == "1" for s, h in answers if s == 503)
        assert after - before < 25, f"RSS grew from {before:.0f} to {after:.0f} MB under overload"
        assert _post_status(url, body, headers)[0] == 200


def test_sigterm_under_load_loses_no_accepted_request(tmp_path: Path) -> None:
    import threading
    import time

    model = shared_model("minilm-l6.onnx")
    feeds = {
        "input_ids": np.full((4, 128), 1000, dtype=np.int64),
        "attention_mask": np.ones((4, 128), dtype=np.int64),
        "token_type_ids": np.zeros((4, 128), dtype=np.int64),
    }
    body, headers = _binary_request(feeds)
    # The lame duck lasts while requests keep coming, up to half the grace: 4 s here.
    proc = RuntimeProcess(model, tmp_path / "log", name="minilm", shutdown_grace_seconds=8).start()
    url = f"{proc.url}/v2/models/minilm/infer"
    results: list[tuple[float, float, object]] = []  # (sent, answered, status or exception)
    lock = threading.Lock()
    stop_at: list[float] = []

    def client() -> None:
        while True:
            sent = time.monotonic()
            try:
                outcome: object = _post_status(url, body, {**headers, "Connection": "close"})[0]
            except OSError as e:
                outcome = e
            with lock:
                results.append((sent, time.monotonic(), outcome))
            if isinstance(outcome, Exception):
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop_at.append(time.monotonic())
    proc.terminate()
    for t in threads:
        t.join(timeout=60)
    code = proc.process.wait(timeout=60)  # type: ignore[union-attr]

    sigterm = stop_at[0]
    answered = [r for r in results if not isinstance(r[2], Exception)]
    failed = [r for r in results if isinstance(r[2], Exception)]
    assert code == 0, proc.tail()
    assert answered and all(status == 200 for _, _, status in answered), answered
    # Requests in flight when SIGTERM came were finished, not dropped.
    assert any(sent < sigterm < done for sent, done, _ in answered), "no request was in flight at SIGTERM"
    # What failed was refused at the door after SIGTERM, never cut off mid-request.
    assert all(sent >= sigterm - 0.05 for sent, _, _ in failed), failed
    # Requests kept coming, so the server kept taking them past the 1 s drain delay, until the cap.
    assert max(sent for sent, _, _ in answered) > sigterm + 2.5, "the lame duck ended while requests came"
    assert "shutting down" in proc.log()


def test_sigterm_with_no_requests_coming_stops_listening_after_the_drain_delay(tmp_path: Path) -> None:
    import time

    proc = RuntimeProcess(shared_model("minilm-l6.onnx"), tmp_path / "log", name="minilm").start()
    sigterm = time.monotonic()
    proc.terminate()
    code = proc.process.wait(timeout=30)  # type: ignore[union-attr]
    assert code == 0, proc.tail()
    # The drain delay (1 s) with no request in it, then out: not the lame duck's cap of half the grace.
    assert time.monotonic() - sigterm < 5


def test_bad_settings_are_named_with_flag_and_variable() -> None:
    import subprocess
    import sys

    zeroserve = str(Path(sys.executable).parent / "zeroserve")
    out = subprocess.run(
        [zeroserve, "serve", "--http-port=70000"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "--model-uri (ZEROSERVE_MODEL_URI): Field required" in out.stderr
    assert "--http-port (ZEROSERVE_HTTP_PORT)" in out.stderr
    assert "Traceback" not in out.stderr
