"""The GPU check behind bench/gpu_check.sh: `zeroserve serve --device gpu` on EfficientNet-Lite0 and
MiniLM-L6, against raw onnxruntime-gpu in the same run.

For each model it
  1. starts the runtime with --device gpu (no CPU fallback) and checks that it says CUDAExecutionProvider
     in its model metadata and its zeroserve_execution_provider metric;
  2. sends fixed inputs (the binary tensor extension) and compares the answers with a CPU session's,
     within --rtol/--atol (the CUDA provider may use TF32 and other kernels, so not bit for bit);
  3. measures p50 latency (one request at a time, batch 1) and throughput (--concurrency clients) through
     the runtime, and the same for a raw onnxruntime-gpu session in this process;
  4. measures p50 latency at each of --batches, through the runtime and raw: a GPU earns its keep on
     batches, so batch 1 alone would understate it against a CPU;
  5. with --batching N, restarts the runtime with adaptive batching (--max-batch-size N, each run padded
     to N rows on CUDA) under each of --searches (cuDNN's conv algorithm search), checks one answer
     against CPU, and counts batch-1 inferences per second from --batching-clients client processes
     against it, over two spans, and against the unbatched runtime: what batching gives back of the GPU
     when each request costs the runtime's HTTP path more than the inference.

    python bench/gpu_check.py preflight [options]    argument checks and the GPU probe only (stdlib)
    python bench/gpu_check.py requirement            the onnxruntime-gpu requirement the GPU image installs
    python bench/gpu_check.py run [options]          everything, in a venv with onnxruntime-gpu

The top level imports the standard library only: the shell script runs `preflight` with any python3
before it builds the multi-GB venv, so a machine without a GPU fails in a second, not after the install.
Exit status: 0 all checks passed, 1 a check failed, 2 bad arguments or no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "runtimes" / "onnx" / "Dockerfile"
CUDA = "CUDAExecutionProvider"


class Refused(Exception):
    """Bad arguments or a machine that cannot run the check: exit 2 with the message."""


@dataclass(frozen=True)
class ModelCase:
    file: str
    name: str
    seq: int = 0  # MiniLM's sequence length; 0 for the image model

    def feeds(self, batch: int, seed: int = 0) -> dict[str, Any]:
        import numpy as np

        rng = np.random.default_rng(seed)
        if not self.seq:
            return {"input": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
        ids = rng.integers(1000, 29000, (batch, self.seq), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP], as the tokenizer frames a sentence
        return {
            "input_ids": ids,
            "attention_mask": np.ones((batch, self.seq), np.int64),
            "token_type_ids": np.zeros((batch, self.seq), np.int64),
        }


MODELS = (ModelCase("efficientnet-lite0.onnx", "efficientnet"), ModelCase("minilm-l6.onnx", "minilm", 128))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["preflight", "requirement", "run"])
    p.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("ZEROSERVE_SHARED_MODELS", REPO.parent / "shared" / "models")),
        help="folder with efficientnet-lite0.onnx and minilm-l6.onnx (default ../shared/models)",
    )
    p.add_argument(
        "--zeroserve",
        type=Path,
        default=Path(sys.executable).parent / "zeroserve",
        help="the zeroserve command of the venv with onnxruntime-gpu (default: beside this python)",
    )
    p.add_argument("--seconds", type=float, default=10, help="length of each measurement (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="clients for throughput (default 8)")
    p.add_argument("--rtol", type=float, default=1e-2, help="relative tolerance against CPU (default 1e-2)")
    p.add_argument("--atol", type=float, default=1e-2, help="absolute tolerance against CPU (default 1e-2)")
    p.add_argument(
        "--batches",
        type=batch_sizes,
        default=(1, 8, 16, 32),
        help="batch sizes for the p50 at each batch, comma-separated (default 1,8,16,32)",
    )
    p.add_argument(
        "--batch-seconds", type=float, default=2, help="length of each batch's p50 measurement (default 2)"
    )
    p.add_argument(
        "--batching",
        type=int,
        default=16,
        help="the runtime's --max-batch-size for the batching throughput; 1 skips it (default 16)",
    )
    p.add_argument(
        "--batching-clients",
        type=int,
        default=32,
        help="client processes for the batching throughput, one request in flight each (default 32)",
    )
    p.add_argument(
        "--batching-delay-ms",
        type=float,
        default=2.0,
        help="the runtime's --max-queue-delay-ms when batching (default 2)",
    )
    p.add_argument(
        "--searches",
        type=searches,
        default=("EXHAUSTIVE", "HEURISTIC"),
        help="the runtime's --cudnn-conv-algo-search values to batch with, comma-separated (default "
        "EXHAUSTIVE,HEURISTIC)",
    )
    p.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    p.add_argument(
        "--keep",
        type=Path,
        help="keep each runtime's log in this folder (default: a temporary one, removed at the end)",
    )
    args = p.parse_args(argv)
    for name in ("seconds", "batch_seconds", "rtol", "atol"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be above 0, not {getattr(args, name)}")
    if not 1 <= args.concurrency <= 256:
        p.error(f"--concurrency must be 1 to 256, not {args.concurrency}")
    if not 1 <= args.batching <= 256:
        p.error(f"--batching must be 1 to 256, not {args.batching}")
    if not 1 <= args.batching_clients <= 256:
        p.error(f"--batching-clients must be 1 to 256, not {args.batching_clients}")
    if args.batching_delay_ms < 0:
        p.error(f"--batching-delay-ms must be 0 or more, not {args.batching_delay_ms}")
    return args


def batch_sizes(text: str) -> tuple[int, ...]:
    """--batches: sizes from 1 to 256, comma-separated; 256 bounds one request's body (EfficientNet's
    input is 0.6 MB an image)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or not all(1 <= size <= 256 for size in sizes):
        raise argparse.ArgumentTypeError(f"must be batch sizes 1 to 256, comma-separated, not {text!r}")
    return sizes


def searches(text: str) -> tuple[str, ...]:
    """--searches: cuDNN's conv algorithm searches, as the runtime names them."""
    names = tuple(part.strip().upper() for part in text.split(","))
    if not names or not all(n in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT") for n in names):
        raise argparse.ArgumentTypeError(
            f"must be EXHAUSTIVE, HEURISTIC or DEFAULT, comma-separated, not {text!r}"
        )
    return names


def check_models(folder: Path) -> None:
    missing = [m.file for m in MODELS if not (folder / m.file).is_file()]
    if missing:
        raise Refused(
            f"{', '.join(missing)} not in {folder}: the real models live in ../shared/models beside the "
            "repository (see its README); pass --models or set ZEROSERVE_SHARED_MODELS"
        )


def probe_gpu() -> str:
    """The GPUs nvidia-smi lists, or Refused: without the NVIDIA driver there is nothing to check."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise Refused(
            "no NVIDIA GPU or driver here: nvidia-smi is not on PATH. bench/gpu_check.sh needs a machine "
            "with an NVIDIA GPU and its driver (in a container: the NVIDIA container toolkit)"
        )
    query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise Refused("nvidia-smi did not answer within 60 s: the NVIDIA driver is not working") from None
    gpus = out.stdout.strip()
    if out.returncode != 0 or not gpus:
        said = (out.stderr or out.stdout).strip()
        raise Refused(f"nvidia-smi finds no usable GPU (exit {out.returncode}): {said}")
    return gpus


def gpu_requirement() -> str:
    """The image's ONNXRUNTIME_GPU default, so the check installs exactly what the GPU image does."""
    m = re.search(r"^ARG ONNXRUNTIME_GPU=(.+)$", DOCKERFILE.read_text(), re.M)
    if m is None:
        raise Refused(f"{DOCKERFILE} declares no ARG ONNXRUNTIME_GPU=...")
    return shlex.split(m[1])[0]


# -- the runtime, over the binary tensor extension ---------------------------------------------------

DATATYPES = {"float32": "FP32", "int64": "INT64"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runtime:
    """`zeroserve serve --device gpu` on a loopback port, its log in a file."""

    def __init__(
        self, zeroserve: Path, model: Path, name: str, log: Path, cache: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.name, self.port, self.log = name, free_port(), log
        argv = [
            str(zeroserve),
            "serve",
            f"--model-uri={model}",
            f"--model-name={name}",
            "--device=gpu",
            "--host=127.0.0.1",
            f"--http-port={self.port}",
            "--grpc-port=0",
            f"--cache-dir={cache}",
            *extra,
        ]
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"zeroserve serve --device gpu exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url("/v2/health/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready within {timeout}s:\n{self.tail()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url(path), timeout=10) as r:
            return r.read().decode()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def encode(feeds: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": DATATYPES[str(a.dtype)],
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in feeds.items()
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(a.tobytes() for a in feeds.values())
    return body, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def decode(body: bytes, header_length: int) -> dict[str, Any]:
    import numpy as np

    header = json.loads(body[:header_length])
    offset, outputs = header_length, {}
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64}[out["datatype"]]
        outputs[out["name"]] = np.frombuffer(body[offset : offset + size], dtype).reshape(out["shape"])
        offset += size
    return outputs


class Client:
    """One keep-alive connection, as a real client holds."""

    def __init__(self, runtime: Runtime) -> None:
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=60)
        self.path = f"/v2/models/{runtime.name}/infer"

    def infer(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        self.conn.request("POST", self.path, body, headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise AssertionError(f"infer answered {r.status}: {data[:500]!r}")
        return decode(data, int(r.headers["Inference-Header-Content-Length"]))


# -- measurement -------------------------------------------------------------------------------------


@dataclass
class Figures:
    p50_ms: float
    per_second: float
    requests: int = field(default=0)


def p50_ms(call: Any, seconds: float, warmup: int = 20) -> float:
    """The median latency of `call`, one at a time, over `seconds`."""
    import statistics

    for _ in range(warmup):  # the provider's lazy setup (per input shape) and the connection, out of it
        call()
    latencies = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        call()
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies) * 1000


def measure(call_factory: Any, seconds: float, concurrency: int) -> Figures:
    """p50 of one caller alone, then inferences per second from `concurrency` callers at once; each
    caller gets its own `call_factory()` (a connection, for the runtime)."""
    p50 = p50_ms(call_factory(), seconds)
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        mine = call_factory()
        while time.perf_counter() < stop_at:
            mine()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return Figures(p50, sum(counts) / elapsed, sum(counts))


def _client_process(
    port: int, path: str, body: bytes, headers: dict[str, str], start_at: float, stop_at: float
) -> int:
    """One client process: one kept-alive connection, one request in flight, from start_at to stop_at
    (wall clock, shared by every process); the answers it got."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    count = 0
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        conn.request("POST", path, body, headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise AssertionError(f"infer answered {r.status}")
        count += 1
    return count


def per_second_from_processes(
    runtime: Runtime, body: bytes, headers: dict[str, str], clients: int, seconds: float
) -> float:
    """Answers per second from `clients` processes at once: threads of one Python client would share a
    GIL and count the client's limit, not the runtime's. Spawned, not forked, from a process holding a
    CUDA context."""
    import multiprocessing

    path = f"/v2/models/{runtime.name}/infer"
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        start_at = time.time() + 2 + clients * 0.05  # every process started and connected first
        stop_at = start_at + seconds
        runs = [
            pool.apply_async(_client_process, (runtime.port, path, body, headers, start_at, stop_at))
            for _ in range(clients)
        ]
        return sum(r.get(timeout=seconds + 120) for r in runs) / seconds


def close_enough(name: str, got: Any, want: Any, args: argparse.Namespace) -> list[str]:
    import numpy as np

    rtol, atol = args.rtol, args.atol

    if got.shape != want.shape:
        return [f"{name}: shape {got.shape}, CPU {want.shape}"]
    if np.allclose(got, want, rtol=rtol, atol=atol):
        return []
    worst = float(np.max(np.abs(got.astype(np.float64) - want)))
    return [f"{name}: max |GPU - CPU| = {worst:.3g}, over rtol {rtol} / atol {atol}"]


def check_model(
    case: ModelCase, args: argparse.Namespace, logs: Path, cache: Path
) -> tuple[dict[str, Any], list[str]]:
    import numpy as np
    import onnxruntime as ort

    path = args.models / case.file
    failures: list[str] = []
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = ort.InferenceSession(str(path), providers=[CUDA, "CPUExecutionProvider"])
    if raw.get_providers()[0] != CUDA:
        raise Refused(f"raw onnxruntime could not start {CUDA} (its error is above): nothing to compare")
    names = [o.name for o in cpu.get_outputs()]
    batch8 = case.feeds(8, seed=1)
    want = dict(zip(names, cpu.run(names, batch8), strict=True))
    for name, got in zip(names, raw.run(names, batch8), strict=True):
        failures += close_enough(f"{case.name} raw onnxruntime-gpu {name}", got, want[name], args)

    runtime = Runtime(args.zeroserve, path, case.name, logs / f"{case.name}.log", cache)
    try:
        runtime.wait_ready()
        meta = json.loads(runtime.get(f"/v2/models/{case.name}"))
        provider = (meta.get("parameters") or {}).get("execution_provider")
        if provider != CUDA:
            failures.append(f"{case.name}: the runtime's metadata says execution_provider {provider!r}")
        metric = f'zeroserve_execution_provider{{model="{case.name}",provider="{CUDA}"}} 1.0'
        if metric not in runtime.get("/metrics").splitlines():
            failures.append(f"{case.name}: /metrics has no {metric}")
        body, headers = encode(batch8)
        served = Client(runtime).infer(body, headers)
        for name in names:
            failures += close_enough(f"{case.name} runtime {name}", served[name], want[name], args)
        if not case.seq:
            # The answer a user reads: the same class for every image.
            same = np.argmax(served["logits"], 1) == np.argmax(want["logits"], 1)
            if not same.all():
                failures.append(f"{case.name}: top-1 class differs from CPU for {int((~same).sum())} of 8")

        one = case.feeds(1, seed=2)
        one_body, one_headers = encode(one)

        def runtime_call() -> Any:
            client = Client(runtime)
            return lambda: client.infer(one_body, one_headers)

        def raw_call() -> Any:
            return lambda: raw.run(names, one)

        through_runtime = measure(runtime_call, args.seconds, args.concurrency)
        raw_figures = measure(raw_call, args.seconds, args.concurrency)

        batches = []
        for size in args.batches:
            feeds = case.feeds(size, seed=3)
            batch_body, batch_headers = encode(feeds)
            client = Client(runtime)
            # Fewer warm-up calls than at batch 1: a batch of 32 images is 19 MB a request.
            served_ms = p50_ms(partial(client.infer, batch_body, batch_headers), args.batch_seconds, 5)
            raw_ms = p50_ms(partial(raw.run, names, feeds), args.batch_seconds, 5)
            batches.append({"batch": size, "runtime_p50_ms": served_ms, "raw_p50_ms": raw_ms})
        if args.batching > 1:
            unbatched = per_second_from_processes(
                runtime, one_body, one_headers, args.batching_clients, args.seconds
            )
    finally:
        runtime.stop()
    figures = {
        "provider": provider,
        "runtime": through_runtime.__dict__,
        "raw_onnxruntime_gpu": raw_figures.__dict__,
        "batches": batches,
    }
    if args.batching > 1:
        want_one = dict(zip(names, cpu.run(names, one), strict=True))
        raw_at = next((b["raw_p50_ms"] for b in batches if b["batch"] == args.batching), None)
        figures["batching"] = {
            "max_batch_size": args.batching,
            "max_queue_delay_ms": args.batching_delay_ms,
            "clients": args.batching_clients,
            "unbatched_per_second": unbatched,
            # Raw onnxruntime-gpu at that batch size, one batch at a time: what the GPU alone allows.
            "raw_per_second_at_batch": args.batching * 1000 / raw_at if raw_at else None,
            "searches": {},
        }
        for search in args.searches:
            batching = Runtime(
                args.zeroserve,
                path,
                case.name,
                logs / f"{case.name}-batching-{search.lower()}.log",
                cache,
                (
                    f"--max-batch-size={args.batching}",
                    f"--max-queue-delay-ms={args.batching_delay_ms:g}",
                    f"--cudnn-conv-algo-search={search}",
                ),
            )
            try:
                batching.wait_ready()
                client = Client(batching)
                served = client.infer(one_body, one_headers)
                for name in names:
                    failures += close_enough(
                        f"{case.name} batching runtime ({search}) {name}", served[name], want_one[name], args
                    )
                alone_ms = p50_ms(partial(client.infer, one_body, one_headers), args.batch_seconds, 5)
                # Twice: the first span meets each batch size's first run, the second what follows.
                first, then = (
                    per_second_from_processes(
                        batching, one_body, one_headers, args.batching_clients, args.seconds
                    )
                    for _ in range(2)
                )
            finally:
                batching.stop()
            warmup = re.search(r"warmup ([0-9.]+)s", batching.log.read_text(errors="replace"))
            figures["batching"]["searches"][search] = {
                "warmup_s": float(warmup[1]) if warmup else None,
                "batch1_p50_ms": alone_ms,
                "first_per_second": first,
                "then_per_second": then,
            }
    return figures, failures


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN wheels' libraries, as the runtime loads them
    providers = ort.get_available_providers()
    if CUDA not in providers:
        raise Refused(
            f"this python's onnxruntime ({ort.__version__}, {sys.executable}) has no {CUDA}, only "
            f"{', '.join(providers)}: run bench/gpu_check.sh, which builds a venv with {gpu_requirement()}"
        )
    if not args.zeroserve.is_file():
        raise Refused(f"{args.zeroserve} does not exist: pass --zeroserve, the venv's zeroserve command")
    report: dict[str, Any] = {"gpus": probe_gpu(), "onnxruntime": ort.__version__, "models": {}}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        logs = args.keep or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for case in MODELS:
            try:
                figures, failed = check_model(case, args, logs, Path(tmp) / "cache")
            except (AssertionError, OSError) as e:
                # A runtime that did not start or answer fails this model; the other is still checked.
                report["models"][case.name] = {"error": str(e)}
                failures.append(f"{case.name}: {e}")
                print(f"{case.name}: FAILED: {e}", flush=True)
                continue
            report["models"][case.name] = figures
            failures += failed
            print_figures(case.name, figures)
    report["failures"] = failures
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"GPUs: {report['gpus']}; onnxruntime {report['onnxruntime']}")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def print_figures(name: str, figures: dict[str, Any]) -> None:
    r, raw = figures["runtime"], figures["raw_onnxruntime_gpu"]
    print(
        f"{name}: provider {figures['provider']}; batch 1 p50 {r['p50_ms']:.2f} ms through the runtime, "
        f"{raw['p50_ms']:.2f} ms raw; {r['per_second']:.0f}/s through the runtime, "
        f"{raw['per_second']:.0f}/s raw",
        flush=True,
    )
    for b in figures["batches"]:
        size, served, raw_ms = b["batch"], b["runtime_p50_ms"], b["raw_p50_ms"]
        print(
            f"{name}: batch {size} p50 {served:.2f} ms through the runtime ({size * 1000 / served:.0f} "
            f"inferences/s), {raw_ms:.2f} ms raw ({size * 1000 / raw_ms:.0f}/s)",
            flush=True,
        )
    if batching := figures.get("batching"):
        size, raw_at = batching["max_batch_size"], batching["raw_per_second_at_batch"]
        print(
            f"{name}: {batching['clients']} client processes at batch 1: "
            f"{batching['unbatched_per_second']:.0f}/s unbatched"
            + (f"; raw at batch {size}: {raw_at:.0f}/s" if raw_at else ""),
            flush=True,
        )
        for search, got in batching["searches"].items():
            warmup = "-" if got["warmup_s"] is None else f"{got['warmup_s']:.2f} s"
            print(
                f"{name}: --max-batch-size {size} --cudnn-conv-algo-search {search}: warm-up {warmup}, "
                f"alone p50 {got['batch1_p50_ms']:.2f} ms, {got['first_per_second']:.0f}/s in the first "
                f"span, {got['then_per_second']:.0f}/s in the second",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "requirement":
            print(gpu_requirement())
            return 0
        check_models(args.models)
        gpus = probe_gpu()
        if args.command == "preflight":
            print(f"GPU: {gpus}")
            return 0
        return run(args)
    except Refused as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
