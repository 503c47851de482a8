"""The ONNX runtime server against its limits, side by side in one run on this machine.

EfficientNet-Lite0 at batch 1, in two session configurations, each against raw onnxruntime in the same
configuration:
  latency     1 inference at a time with 2 intra-op threads (the runtime's default)
  throughput  2 parallel inferences with 1 intra-op thread each (--parallel-inferences 2 --threads 1)
Paths:
  raw         onnxruntime session.run in-process (the limit)
  json-limit  the same ~1 MB JSON body decoded by the runtime's own decoder and run in-process
  json-orjson the same, decoded as the runtime did before pysimdjson (orjson, numpy from Python floats)
  rest-json   wrk -> zeroserve serve, JSON tensors
  rest-bin    wrk -> zeroserve serve, binary tensor extension
  grpc        h2load -> zeroserve serve, raw_input_contents
  grpc-floor  h2load -> the least a grpcio server can do (bench/grpc_floor_server.py), for reference
  cold start  process start -> first successful inference, vs raw python+import+load+run
Each goal is judged strictly: the server's best configuration against raw's best.
MiniLM-L6 at concurrency 16, at a short (16) and the longest (128) sequence: adaptive batching vs
unbatched (REST binary), beside what batching gains raw onnxruntime at that length.

    .venv/bin/python bench/runtime_throughput.py [--seconds 10] [--rounds 3] [--concurrency 4]
Needs wrk and h2load (apt-get install wrk nghttp2-client) and ../shared/models.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import free_port
from runtimeproc import RuntimeProcess, binary_body, shared_model
from zeroserve_runtime.protocol import rest_codec

THREADS = 2


def session(model: Path) -> ort.InferenceSession:
    return configured_session(model, THREADS)


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def json_body(name: str, array: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32", "data": array.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def wrk(url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float, tmp: Path) -> dict:
    body_file = tmp / f"body-{len(body)}.bin"
    body_file.write_bytes(body)
    lua = tmp / "post.lua"
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    lua.write_text(
        f'wrk.method = "POST"\nlocal f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        f"{header_lines}\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M)
    return {
        "rps": float(re.search(r"Requests/sec:\s+(\S+)", out)[1]),
        "errors": int(non2xx[1]) if non2xx else 0,
        "p50": p50[1] if p50 else "?",
    }


def h2load_grpc(address: str, model: str, concurrency: int, seconds: float, tmp: Path) -> float:
    """gRPC load from h2load (nghttp2, C), so the client takes as little of the two cores as wrk does
    for REST. h2load sees HTTP/2 statuses, not gRPC's, so the caller checks the server's own count of
    failed gRPC calls."""
    from tritonclient.grpc import service_pb2

    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend(image.shape)
    request.raw_input_contents.append(image.tobytes())
    message = request.SerializeToString()
    data = tmp / "grpc-request.bin"
    data.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)  # gRPC length-prefixed frame
    out = subprocess.run(
        [
            "h2load",
            f"--clients={concurrency}",
            "--max-concurrent-streams=1",
            f"--duration={seconds:.0f}",
            "--warm-up-time=1",
            f"--data={data}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"http://{address}/inference.GRPCInferenceService/ModelInfer",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if statuses is None or any(int(n) for n in statuses.groups()[1:]):
        raise RuntimeError(f"h2load saw failed calls:\n{out}")
    return float(re.search(r"finished in \S+, ([\d.]+) req/s", out)[1])


def failed_grpc_calls(proc: RuntimeProcess) -> float:
    """gRPC calls the server failed, from its own metrics. Calls h2load cancels when its time is up do
    not count."""
    return sum(
        float(m[1])
        for m in re.finditer(
            r'^zeroserve_requests_total\{[^}]*outcome="(?!success|cancelled)[^}]*protocol="grpc"[^}]*\} '
            r"(\S+)",
            proc.metrics(),
            re.M,
        )
    )


RAW_COLD = r"""
import time, sys
import numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
s.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})
"""


def cold_starts(
    model: Path, body: bytes, header_length: int, tmp: Path, runs: int
) -> tuple[list[float], list[float]]:
    ours, raw = [], []
    for i in range(runs):
        proc = RuntimeProcess(model, tmp / f"cold-{i}.log", name="m", grpc_port=0)
        url = f"{proc.url}/v2/models/m/infer"
        t0 = time.perf_counter()
        proc.start(wait_ready=False)
        while True:
            request = urllib.request.Request(
                url, data=body, headers={"Inference-Header-Content-Length": str(header_length)}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.002)
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(proc.tail())
        ours.append(time.perf_counter() - t0)
        proc.stop()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", RAW_COLD, str(model)], check=True)
        raw.append(time.perf_counter() - t0)
    return ours, raw


CONFIGS = {"latency": (1, 2), "throughput": (2, 1)}  # (parallel inferences, intra-op threads each)


def parallel_rate(fn, parallel: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Calls per second of fn() from `parallel` threads at once (onnxruntime releases the GIL)."""
    if parallel == 1:
        return rate(fn, seconds)
    fn()
    counts = [0] * parallel
    end = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            fn()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def configured_session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def server(model: Path, log: Path, name: str, config: str, **settings: object) -> RuntimeProcess:
    parallel, threads = CONFIGS[config]
    return RuntimeProcess(model, log, name=name, parallel_inferences=parallel, threads=threads, **settings)


def grpc_floor_rate(model: Path, config: str, concurrency: int, seconds: float, tmp: Path) -> float:
    parallel, threads = CONFIGS[config]
    port = free_port()
    script = Path(__file__).resolve().parent / "grpc_floor_server.py"
    argv = [sys.executable, str(script), str(model), str(port), str(parallel), str(threads)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as floor:
        try:
            if floor.stdout is None or floor.stdout.readline().strip() != "ready":
                raise RuntimeError("the gRPC floor server did not start")
            return h2load_grpc(f"127.0.0.1:{port}", "efficientnet", concurrency, seconds, tmp)
        finally:
            floor.kill()


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install wrk nghttp2-client")


def efficientnet(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    secs, conc = args.seconds, args.concurrency
    model = shared_model("efficientnet-lite0.onnx")
    image = np.round(np.random.default_rng(0).standard_normal((1, 3, 224, 224)), 3).astype(np.float32)
    jbody = json_body("input", image)
    bbody, hlen = binary_body({"input": image})
    paths = ("raw", "json-limit", "json-orjson", "rest-bin", "grpc", "grpc-floor", "rest-json")
    samples = {c: {p: [] for p in paths} for c in CONFIGS}
    sessions = {c: configured_session(model, threads) for c, (_, threads) in CONFIGS.items()}

    def json_path(s: ort.InferenceSession) -> None:
        s.run(None, rest_codec.decode_request(jbody, None).inputs)

    def orjson_path(s: ort.InferenceSession) -> None:
        item = orjson.loads(jbody)["inputs"][0]
        x = np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
        s.run(None, {"input": x})

    # This machine is shared and noisy: every figure is measured in every round, interleaved with its
    # limit, and the medians are compared.
    for round_ in range(1, args.rounds + 1):
        for config, (parallel, _) in CONFIGS.items():
            s, got = sessions[config], samples[config]
            got["raw"].append(parallel_rate(lambda s=s: s.run(None, {"input": image}), parallel, secs))
            got["json-limit"].append(parallel_rate(lambda s=s: json_path(s), parallel, secs))
            got["json-orjson"].append(parallel_rate(lambda s=s: orjson_path(s), parallel, secs))
            with server(model, tmp / f"effnet-{config}.log", "efficientnet", config) as proc:
                url = f"{proc.url}/v2/models/efficientnet/infer"
                bin_headers = {"Inference-Header-Content-Length": str(hlen)}
                got["rest-bin"].append(wrk(url, bbody, bin_headers, conc, secs, tmp)["rps"])
                got["grpc"].append(h2load_grpc(proc.grpc_address, "efficientnet", conc, secs, tmp))
                if failed := failed_grpc_calls(proc):
                    raise RuntimeError(f"the server failed {failed:.0f} gRPC calls:\n{proc.tail()}")
                got["rest-json"].append(
                    wrk(url, jbody, {"Content-Type": "application/json"}, conc, secs, tmp)["rps"]
                )
            got["grpc-floor"].append(grpc_floor_rate(model, config, conc, secs, tmp))
            print(
                f"round {round_} {config}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in got.items()),
                flush=True,
            )
    return {c: {p: statistics.median(v) for p, v in got.items()} for c, got in samples.items()}


def minilm_batching(args: argparse.Namespace, tmp: Path, seq: int) -> dict[str, float]:
    model = shared_model("minilm-l6.onnx")

    def feeds(rows: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": np.full((rows, seq), 2000, dtype=np.int64),
            "attention_mask": np.ones((rows, seq), dtype=np.int64),
            "token_type_ids": np.zeros((rows, seq), dtype=np.int64),
        }

    s = configured_session(model, THREADS)
    one, sixteen = feeds(1), feeds(16)
    out = {
        "raw-batch-1": rate(lambda: s.run(None, one), args.seconds),
        "raw-batch-16": 16 * rate(lambda: s.run(None, sixteen), args.seconds),
    }
    body, hlen = binary_body(one)
    batched = {"max_batch_size": 16, "max_queue_delay_ms": 2}
    for label, config, extra in (
        ("unbatched-latency", "latency", {}),
        ("unbatched-throughput", "throughput", {}),
        ("batched-latency", "latency", batched),
        ("batched-throughput", "throughput", batched),
    ):
        with server(model, tmp / f"minilm-{seq}-{label}.log", "minilm", config, **extra) as proc:
            url = f"{proc.url}/v2/models/minilm/infer"
            headers = {"Inference-Header-Content-Length": str(hlen)}
            out[label] = wrk(url, body, headers, 16, args.seconds, tmp)["rps"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cold-runs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    require_tools()
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmpdir:
        tmp = Path(tmpdir)
        results = efficientnet(args, tmp)
        model = shared_model("efficientnet-lite0.onnx")
        image = np.zeros((1, 3, 224, 224), dtype=np.float32)
        bbody, hlen = binary_body({"input": image})
        ours, raw_cold = cold_starts(model, bbody, hlen, tmp, args.cold_runs)
        minilm = {seq: minilm_batching(args, tmp, seq) for seq in (16, 128)}

    print(
        f"\nEfficientNet-Lite0, batch 1, concurrency {args.concurrency}, "
        f"median of {args.rounds} interleaved rounds of {args.seconds:.0f}s"
    )
    names = list(CONFIGS)
    print(f"{'path':<12}" + "".join(f"{f'{c} {CONFIGS[c][0]}x{CONFIGS[c][1]}':>26}" for c in names))
    goals = {"rest-json": ("json-limit", 0.80), "rest-bin": ("raw", 0.85), "grpc": ("raw", 0.85)}
    for path in ("raw", "json-limit", "json-orjson", "rest-json", "rest-bin", "grpc", "grpc-floor"):
        cells = []
        for c in names:
            value = results[c][path]
            limit = {"grpc-floor": "raw", "json-orjson": "json-limit"}.get(path) or goals.get(path, (None,))[
                0
            ]
            share = f" = {value / results[c][limit]:.0%} of {limit}" if limit else ""
            cells.append(f"{value:.0f}/s{share}")
        print(f"{path:<12}" + "".join(f"{cell:>26}" for cell in cells))
    met = True
    print("\nGoals, the server's best configuration against raw's best:")
    for path, (limit, goal) in goals.items():
        best = max(results[c][path] for c in names)
        best_limit = max(results[c][limit] for c in names)
        ratio = best / best_limit
        met &= ratio >= goal
        print(
            f"  {path:<10} {best:.0f}/s / {limit} {best_limit:.0f}/s = {ratio:.0%}  (>= {goal:.0%}: "
            f"{'met' if ratio >= goal else 'MISSED'})"
        )
    floor = max(results[c]["grpc-floor"] for c in names)
    print(
        f"  (grpc against the least a grpcio server does, {floor:.0f}/s: "
        f"{max(results[c]['grpc'] for c in names) / floor:.0%})"
    )
    cold, ref = statistics.median(ours), statistics.median(raw_cold)
    met &= cold <= 0.4
    print(
        f"  cold start {cold:.3f}s (<= 0.400s: {'met' if cold <= 0.4 else 'MISSED'}); "
        f"raw python+import+load+run {ref:.3f}s (ours {cold / ref:.1f}x)"
    )
    print("\nMiniLM-L6, concurrency 16 (rows/s):")
    for seq, m in minilm.items():
        unbatched = max(m["unbatched-latency"], m["unbatched-throughput"])
        batched = max(m["batched-latency"], m["batched-throughput"])
        gain = batched / unbatched
        met &= gain >= 1.25
        print(
            f"  seq {seq:>3}: unbatched {m['unbatched-latency']:.0f} (1x2) / {m['unbatched-throughput']:.0f} "
            f"(2x1), batched {m['batched-latency']:.0f} (1x2) / {m['batched-throughput']:.0f} (2x1): best "
            f"{gain:.2f}x (>= 1.25x: {'met' if gain >= 1.25 else 'MISSED'}); raw onnxruntime batch 16 vs 1: "
            f"{m['raw-batch-16'] / m['raw-batch-1']:.2f}x"
        )
    print(
        json.dumps(
            {"efficientnet": results, "cold_start_s": ours, "raw_cold_start_s": raw_cold, "minilm": minilm},
            default=str,
        )
    )
    return 0 if met else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
