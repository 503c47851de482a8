"""The runtime server against its peers, MLServer and KServe, side by side in one run: EfficientNet-Lite0,
batch 1, the same ~1 MB OIP v2 JSON body from wrk at concurrency 4, in interleaved rounds, with the
in-process JSON limit (orjson decode + numpy + session.run) as the reference.

Each peer runs from its own virtualenv, as its users install it, serving the model through its own
custom-model API with onnxruntime at 2 intra-op threads, as zeroserve does by default; zeroserve also runs
with 2 parallel inferences of 1 thread each (zeroserve-2x1):

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install mlserver onnxruntime numpy
    python3 -m venv /tmp/peers-kserve && /tmp/peers-kserve/bin/pip install kserve onnxruntime numpy
    .venv/bin/python bench/runtime_peers.py --mlserver-venv /tmp/peers --kserve-venv /tmp/peers-kserve

Two limits in process: json-limit decodes with the runtime's own decoder (rest_codec.decode_request),
json-orjson as the runtime did before pysimdjson (orjson, then numpy from Python floats). With
--baseline REF, the runtime's code at that commit (git archive) serves too, as the -baseline rows, so a
change shows against what it replaced in the same run. With --open-loop-rate, `zeroserve bench` then
sends open-loop Poisson arrivals at that rate to zeroserve (and its baseline) and MLServer side by side,
and their p50s are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import free_port
from runtime_throughput import THREADS, json_body, rate, session, wrk
from runtimeproc import REPO_ROOT, RuntimeProcess, shared_model
from serviceproc import ServiceProcess
from zeroserve_runtime.protocol import rest_codec

MLSERVER_RUNTIME = """
import numpy as np, onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OnnxRuntime(MLModel):
    async def load(self):
        o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, o, providers=["CPUExecutionProvider"])
        self.names = [x.name for x in self.session.get_outputs()]
        return True

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        feeds = {{i.name: NumpyCodec.decode_input(i) for i in request.inputs}}
        outputs = self.session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self.names, outputs)],
        )
"""

KSERVE_SERVER = """
import sys, uuid
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

class Onnx(Model):
    def __init__(self, name, path):
        super().__init__(name)
        o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        self.names = [x.name for x in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {{i.name: i.as_numpy() for i in payload.inputs}}
        outputs = []
        for name, array in zip(self.names, self.session.run(None, feeds)):
            out = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            out.set_data_from_numpy(array, binary_data=False)
            outputs.append(out)
        # KServe 0.21 requires a response id; the request carries none.
        rid = payload.id or str(uuid.uuid4())
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=rid)

if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1).start(
        [Onnx("efficientnet", sys.argv[1])]
    )
"""


class PeerProcess(ServiceProcess):
    """A peer server from its own venv; started, awaited and stopped as the suite's own processes are."""

    what = "peer"

    def __init__(self, argv: list[str], log_path: Path, url: str, env: dict[str, str] | None = None) -> None:
        super().__init__(argv, log_path, env)
        self.url = url

    @property
    def ready_url(self) -> str:
        return f"{self.url}/v2/models/efficientnet/ready"


def mlserver(venv: Path, model: Path, tmp: Path) -> PeerProcess:
    d = tmp / "mlserver"
    d.mkdir()
    (d / "runtime.py").write_text(MLSERVER_RUNTIME.format(threads=THREADS))
    http = free_port()
    (d / "settings.json").write_text(
        # parallel_workers 0: inference in the server process. MLServer 1.7.1's worker processes die at
        # start with the uvloop pip installs beside it (asyncio.get_event_loop in a fresh process).
        json.dumps(
            {"http_port": http, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
        )
    )
    (d / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "efficientnet",
                "implementation": "runtime.OnnxRuntime",
                "parameters": {"uri": str(model)},
            }
        )
    )
    # runtime.py is imported from the model folder.
    argv = [str(venv / "bin" / "mlserver"), "start", str(d)]
    return PeerProcess(argv, tmp / "mlserver.log", f"http://127.0.0.1:{http}", {"PYTHONPATH": str(d)})


def kserve(venv: Path, model: Path, tmp: Path) -> PeerProcess:
    script = tmp / "kserve_server.py"
    script.write_text(KSERVE_SERVER.format(threads=THREADS))
    http = free_port()
    argv = [str(venv / "bin" / "python"), str(script), str(model), str(http), str(free_port())]
    return PeerProcess(argv, tmp / "kserve.log", f"http://127.0.0.1:{http}")


def baseline_runtime(ref: str, tmp: Path) -> Path:
    """The runtime package as it was at `ref`, to put first on a server's PYTHONPATH."""
    out = tmp / "baseline"
    out.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "runtimes/zeroserve_runtime"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "runtimes"


def zeroserve_servers(model: Path, tmp: Path, suffix: str = "", pythonpath: Path | None = None) -> dict:
    """zeroserve in its default configuration, and with two inferences of one thread each at once, which
    neither peer can in one process: shown apart, the comparison stays like for like."""
    servers = {
        f"zeroserve{suffix}": RuntimeProcess(
            model, tmp / f"zeroserve{suffix}.log", name="efficientnet", threads=THREADS, grpc_port=0
        ),
        f"zeroserve-2x1{suffix}": RuntimeProcess(
            model,
            tmp / f"zeroserve-2x1{suffix}.log",
            name="efficientnet",
            threads=1,
            parallel_inferences=2,
            grpc_port=0,
        ),
    }
    if pythonpath is not None:
        for server in servers.values():
            server.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(pythonpath), os.getenv("PYTHONPATH")])
            )
    return servers


def open_loop_p50s(urls: dict[str, str], body: bytes, rate: float, seconds: float, tmp: Path) -> dict:
    """Each target's client-side p50 (ms) under open-loop Poisson arrivals at `rate`, side by side."""
    (tmp / "payload.json").write_bytes(body)
    bench = {
        "targets": [
            {"name": name, "kind": "oip-rest", "url": url, "model": "efficientnet"}
            for name, url in urls.items()
        ],
        "payload": "payload.json",
        "workload": {"type": "constant", "rate": rate, "duration_s": seconds},
    }
    (tmp / "open-loop.yaml").write_text(json.dumps(bench))
    out = tmp / "open-loop"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "zeroserve"),
            "bench",
            str(tmp / "open-loop.yaml"),
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    report = json.loads((out / "report.json").read_text())
    return {t["name"]: t for t in report["targets"]}


def check_answer(url: str, body: bytes, expected: np.ndarray) -> None:
    """Every server must answer the request correctly before its speed counts."""
    request = urllib.request.Request(
        f"{url}/v2/models/efficientnet/infer", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            (output,) = orjson.loads(r.read())["outputs"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}: {e.code} {e.read()[:500]!r}") from None
    got = np.asarray(output["data"], dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mlserver-venv", type=Path, required=True)
    parser.add_argument("--kserve-venv", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--baseline", metavar="REF", help="also serve the runtime as it was at this commit")
    parser.add_argument("--open-loop-rate", type=float, help="then compare p50s at this request rate")
    parser.add_argument("--open-loop-seconds", type=float, default=60)
    args = parser.parse_args()
    model = shared_model("efficientnet-lite0.onnx")
    image = np.round(np.random.default_rng(0).standard_normal((1, 3, 224, 224)), 3).astype(np.float32)
    body = json_body("input", image)
    s = session(model)
    expected = s.run(None, {"input": image})[0]

    def json_limit() -> None:
        request = rest_codec.decode_request(body, None)
        s.run(None, request.inputs)

    def json_orjson() -> None:
        item = orjson.loads(body)["inputs"][0]
        s.run(None, {"input": np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])})

    headers = {"Content-Type": "application/json"}
    results: dict[str, list[float]] = {"json-limit": [], "json-orjson": []}
    p50s: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="zeroserve-peers-") as d:
        tmp = Path(d)
        servers: dict[str, RuntimeProcess | PeerProcess] = zeroserve_servers(model, tmp)
        if args.baseline:
            old = baseline_runtime(args.baseline, tmp)
            servers |= zeroserve_servers(model, tmp, "-baseline", pythonpath=old)
        servers["mlserver"] = mlserver(args.mlserver_venv, model, tmp)
        servers["kserve"] = kserve(args.kserve_venv, model, tmp)
        results |= {name: [] for name in servers}
        try:
            for server in servers.values():
                server.start(timeout=120)
            urls = {name: server.url for name, server in servers.items()}
            for url in urls.values():
                check_answer(url, body, expected)
            for r in range(args.rounds):
                results["json-limit"].append(rate(json_limit, args.seconds))
                results["json-orjson"].append(rate(json_orjson, args.seconds))
                for name, url in urls.items():
                    out = wrk(
                        f"{url}/v2/models/efficientnet/infer",
                        body,
                        headers,
                        args.concurrency,
                        args.seconds,
                        tmp,
                    )
                    if out["errors"]:
                        raise RuntimeError(f"{name}: {out['errors']} non-2xx answers")
                    results[name].append(out["rps"])
                print(
                    f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()),
                    flush=True,
                )
            if args.open_loop_rate:
                # The default configuration of each (2 intra-op threads), as one request at a time sees it.
                names = [n for n in urls if n in ("mlserver", "zeroserve", "zeroserve-baseline")]
                targets = {n: urls[n] for n in names}
                p50s = open_loop_p50s(targets, body, args.open_loop_rate, args.open_loop_seconds, tmp)
        finally:
            for server in servers.values():
                server.stop(grace=15)
    med = {k: statistics.median(v) for k, v in results.items()}
    size = len(body) / 1e6
    print(f"\nEfficientNet-Lite0, ~{size:.1f} MB JSON, concurrency {args.concurrency}, median of rounds")
    for name, value in med.items():
        print(
            f"  {name:<28} {value:6.1f}/s  {value / med['json-limit']:5.0%} of the JSON limit, "
            f"{value / med['mlserver']:.2f}x MLServer, {value / med['kserve']:.2f}x KServe"
        )
    if p50s:
        print(f"\nOpen loop, {args.open_loop_rate:g} req/s each, {args.open_loop_seconds:.0f}s side by side:")
        base = p50s["mlserver"]["latency_ms"]["p50"]
        for name, target in p50s.items():
            lat = target["latency_ms"]
            print(
                f"  {name:<28} p50 {lat['p50']:6.1f} ms ({lat['p50'] / base:.2f}x MLServer's), "
                f"p90 {lat['p90']:6.1f} ms, {target['requests'] - target['successes']} failed"
            )
    print(json.dumps({"rates": med, "open_loop": {n: t["latency_ms"] for n, t in p50s.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
