"""`zeroserve bench` for real: real locust (as a subprocess, since locust patches its process with gevent)
against a real runtime over REST and gRPC. The report must agree with the server's own Prometheus counters
and histograms; bad bench files and unreachable targets get clear errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from runtimeproc import RuntimeProcess, linear_model
from zeroserve_loadgen.targets import BenchFileError, load_bench_file

ZEROSERVE = str(Path(sys.executable).parent / "zeroserve")
PAYLOAD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture
def runtime(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = RuntimeProcess(linear_model(tmp_path / "linear.onnx"), tmp_path / "runtime.log", name="linear")
    server.start()
    yield server
    server.stop()


def _write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def _bench(bench_file: Path, out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZEROSERVE, "bench", str(bench_file), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _server_counts(runtime: RuntimeProcess) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """Successful requests by protocol, and each protocol's latency histogram as (le, cumulative count)."""
    counts: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(runtime.metrics()):
        for s in family.samples:
            if s.name == "zeroserve_requests_total" and s.labels["outcome"] == "success":
                counts[s.labels["protocol"]] = s.value
            if s.name == "zeroserve_request_duration_seconds_bucket":
                buckets.setdefault(s.labels["protocol"], []).append((float(s.labels["le"]), s.value))
    return counts, buckets


def test_report_matches_the_servers_own_counters(runtime: RuntimeProcess, tmp_path: Path) -> None:
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [
                {
                    "name": "rest",
                    "kind": "oip-rest",
                    "url": runtime.url,
                    "model": "linear",
                    "idle_window_s": 30,
                },
                {"name": "grpc", "kind": "oip-grpc", "url": runtime.grpc_address, "model": "linear"},
            ],
            "payload": PAYLOAD,
            "workload": {
                "type": "mmpp",
                "rates": [20, 120],
                "mean_sojourn_s": [1.5, 1],
                "duration_s": 4,
                "seed": 4,
            },
        },
    )
    out = tmp_path / "out"
    result = _bench(bench, out)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    by_name = {t["name"]: t for t in report["targets"]}
    counts, buckets = _server_counts(runtime)

    for name in ("rest", "grpc"):
        t = by_name[name]
        assert t["requests"] > 50
        assert t["successes"] == t["requests"], t["errors"]
        # Every request the report counts as a success, the server counted as one: no more, no less.
        assert counts[name] == t["successes"]

    # The fresh server's first answer paid its cold start, and said so on exactly one request.
    samples = list(csv.DictReader((out / "samples.csv").open()))
    cold = [s for s in samples if s["cold"] == "True"]
    assert len(cold) == 1 and float(cold[0]["init_s"]) > 0 and float(cold[0]["ready_age_s"]) > 0
    assert by_name["rest"]["cold_by_gap"] == 1, "the first request of the run follows an unknown idle time"

    # Client latency contains the server's: per request via Server-Timing, and as distributions.
    for s in samples:
        assert float(s["server_s"]) <= float(s["latency_s"])
    for name in ("rest", "grpc"):
        lat = sorted(float(s["latency_s"]) for s in samples if s["target"] == name)
        total = buckets[name][-1][1]
        for le, cumulative in buckets[name]:
            client_share = sum(v <= le for v in lat) / len(lat)
            assert client_share <= cumulative / total + 1e-9, f"{name}: more clients than server under {le}s"

    html = (out / "report.html").read_text()
    # Latency over time, offered load and success ratio under it, cost bars, latency CDF.
    assert html.count("data:image/png;base64,") == 4
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["target"] for r in summary] == ["rest", "grpc"]
    # Replicas were not asked for: no empty series that would read as zero pods.
    assert not (out / "replicas.csv").exists() and "replicas over time" not in html
    assert [r["max_replicas"] for r in summary] == ["", ""]
    assert all("replicas" not in t and "max_replicas" not in t for t in report["targets"])
    assert float(summary[0]["cost_per_1m_usd"]) > 0


def test_distributed_workers_split_the_same_schedule(runtime: RuntimeProcess, tmp_path: Path) -> None:
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [{"name": "rest", "kind": "oip-rest", "url": runtime.url, "model": "linear"}],
            "payload": PAYLOAD,
            "workload": {"type": "constant", "rate": 100, "duration_s": 3, "arrival": "uniform"},
        },
    )
    out = tmp_path / "out"
    result = _bench(bench, out, "--workers", "2", "--master-port", str(_free()))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["workers"] == 2
    (t,) = report["targets"]
    assert t["requests"] == t["successes"] == 300
    counts, _ = _server_counts(runtime)
    assert counts["rest"] == 300


def _free() -> int:
    from controlplane import free_port

    return free_port()


def test_unreachable_target_is_named_and_the_others_still_reported(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [
                {"name": "up", "kind": "oip-rest", "url": runtime.url, "model": "linear"},
                {"name": "down", "kind": "gcf", "url": f"http://127.0.0.1:{_free()}", "model": "linear"},
            ],
            "payload": PAYLOAD,
            "workload": {"type": "constant", "rate": 20, "duration_s": 1},
        },
    )
    out = tmp_path / "out"
    result = _bench(bench, out)
    assert result.returncode == 1
    assert "target down: cannot connect to 127.0.0.1" in result.stdout
    report = json.loads((out / "report.json").read_text())
    by_name = {t["name"]: t for t in report["targets"]}
    assert by_name["up"]["successes"] > 0
    assert by_name["down"]["requests"] == 0 and "cannot connect" in by_name["down"]["unreachable"]
    assert any("down: not run" in w for w in report["warnings"])


def test_errors_from_the_target_are_failures_with_their_reason(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [{"name": "wrong", "kind": "oip-rest", "url": runtime.url, "model": "linear"}],
            "payload": {
                "inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
            },
            "workload": {"type": "constant", "rate": 20, "duration_s": 1},
        },
    )
    result = _bench(bench, tmp_path / "out")
    assert result.returncode == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (t,) = report["targets"]
    assert t["requests"] > 0 and t["successes"] == 0
    (error,) = t["errors"]
    assert error.startswith("HTTP 400") and "nope" in error


BAD_FILES = [
    ("targets: []\npayload: {inputs: [{name: x, datatype: FP32, shape: [1], data: [1]}]}\n", "targets"),
    ("targets: [{name: a, kind: oip-rest, model: m}]\npayload: {}\n", "targets[0] (a).url: Field required"),
    ("targets: [{name: a, kind: ftp, url: 'http://x', model: m}]\npayload: p.json\n", "targets[0] (a).kind"),
    (
        "targets: [{name: a, kind: gcf, url: 'http://x', model: m, auth: {type: sigv4, region: eu-west-1}}]\n"
        "payload: p.json\n",
        "sigv4 is for lambda-url targets",
    ),
    (
        "targets: [{name: a, kind: lambda-url, url: 'https://x', model: m, auth: {type: sigv4}}]\n"
        "payload: p.json\n",
        "targets[0] (a).auth.region: Field required",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'grpc://x:1', model: m}]\npayload: p.json\n",
        "http:// or https://",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}, "
        "{name: a, kind: gcf, url: 'http://y', model: m}]\npayload: p.json\n",
        "duplicate names ['a']",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m, "
        "pricing: {model: node, preset: huge}}]\npayload: p.json\n",
        "unknown preset 'huge'",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}]\npayload: missing.json\n",
        "does not exist",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}]\npayload: {inputs: []}\n",
        "non-empty 'inputs'",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}]\npayload: {inputs: [{name: x}]}\n",
        "inputs[0] lacks datatype, shape, data",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}]\npayload: p.json\n"
        "workload: {type: mmpp, rates: [1, 2], duration_s: 5}\n",
        "workload.mean_sojourn_s: Field required",
    ),
    (
        "targets: [{name: a, kind: oip-rest, url: 'http://x', model: m}]\npayload: p.json\n",
        "workload: Field required",
    ),
    ("targets: [oops\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_bench_files_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.json").write_text(json.dumps(PAYLOAD))
    if "workload" not in message and text.startswith("targets:") and "workload:" not in text:
        text += "workload: {type: constant, rate: 1, duration_s: 1}\n"
    path = _write(tmp_path / "bench.yaml", text)
    with pytest.raises(BenchFileError) as e:
        load_bench_file(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_bad_bench_file_on_the_command_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bench.yaml", "targets: [{name: a, kind: oip-rest, model: m}]\npayload: {}\n")
    result = _bench(path, tmp_path / "out")
    assert result.returncode == 2
    assert "targets[0] (a).url: Field required" in result.stdout
    assert not (tmp_path / "out").exists(), "nothing is written for a file that cannot run"


def test_missing_bearer_token_is_named(tmp_path: Path, runtime: RuntimeProcess) -> None:
    path = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [
                {
                    "name": "private",
                    "kind": "gcf",
                    "url": runtime.url,
                    "model": "linear",
                    "auth": {"type": "bearer", "token_env": "ZEROSERVE_TEST_NO_SUCH_TOKEN"},
                }
            ],
            "payload": PAYLOAD,
            "workload": {"type": "constant", "rate": 5, "duration_s": 1},
        },
    )
    result = _bench(path, tmp_path / "out")
    assert result.returncode == 2
    assert "ZEROSERVE_TEST_NO_SUCH_TOKEN is not set" in result.stdout


def test_sequential_mode_runs_targets_one_after_another(runtime: RuntimeProcess, tmp_path: Path) -> None:
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [
                {"name": "first", "kind": "oip-rest", "url": runtime.url, "model": "linear"},
                {"name": "second", "kind": "oip-grpc", "url": runtime.grpc_address, "model": "linear"},
            ],
            "payload": PAYLOAD,
            "workload": {"type": "constant", "rate": 40, "duration_s": 1.5, "arrival": "uniform"},
        },
    )
    out = tmp_path / "out"
    result = _bench(bench, out, "--mode", "sequential", "--gap", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    samples = list(csv.DictReader((out / "samples.csv").open()))
    first = [float(s["sent_s"]) for s in samples if s["target"] == "first"]
    second = [float(s["sent_s"]) for s in samples if s["target"] == "second"]
    assert len(first) == len(second) == 60
    assert max(first) < 1.5 + 0.1 and min(second) >= 2.0 - 0.01, "the second window starts after the gap"


def test_secrets_stay_out_of_every_output(runtime: RuntimeProcess, tmp_path: Path) -> None:
    token, key = "tok-e7d1c2b9", "key-3f9a0c55"
    bench = _write(
        tmp_path / "bench.yaml",
        {
            "targets": [
                {
                    "name": "private",
                    "kind": "gcf",
                    "url": runtime.url,
                    "model": "linear",
                    "auth": {"type": "bearer", "token_env": "ZEROSERVE_TEST_TOKEN"},
                    "headers": {"x-api-key": key},
                }
            ],
            "payload": PAYLOAD,
            "workload": {"type": "constant", "rate": 10, "duration_s": 1},
        },
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [ZEROSERVE, "bench", str(bench), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ZEROSERVE_TEST_TOKEN": token},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for path in [*out.iterdir(), None]:
        text = path.read_text() if path else result.stdout + result.stderr
        assert token not in text and key not in text, path


SENDER_FAILS_ONCE = """
import sys, time
import locust  # patches the process first, as the CLI does
from zeroserve_loadgen import clients
from zeroserve_loadgen.plan import RunPlan
from zeroserve_loadgen.runner import run_local
from zeroserve_loadgen.targets import Target
from zeroserve_loadgen.workloads import Constant

calls = 0
send = clients.RestSender.send

def flaky(self):
    global calls
    calls += 1
    if calls == 5:
        raise RuntimeError("boom")
    return send(self)

clients.RestSender.send = flaky
plan = RunPlan(
    targets=[Target(name="t", kind="oip-rest", url=sys.argv[1], model="linear")],
    payload={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
    workload=Constant(rate=40, duration_s=1, arrival="uniform"),
)
outcome = run_local(plan)
errors = [s.error for s in outcome.samples if s.error]
print(len(outcome.samples), errors, outcome.errors)
"""


def test_a_failing_send_costs_one_sample_not_the_run(runtime: RuntimeProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SENDER_FAILS_ONCE, runtime.url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "40 ['RuntimeError: boom'] []"
    # Nothing is sent again after the run: the schedule ran once.
    counts, _ = _server_counts(runtime)
    assert counts["rest"] == 39


class SigV4FunctionUrl:
    """A loopback stand-in for a Lambda function URL with AuthType AWS_IAM: it recomputes each request's
    Signature V4 with botocore's own signer, from the secret it knows, and answers 403 on a mismatch as
    AWS does. What it decided for each request is in `verdicts`."""

    ACCESS_KEY, SECRET, REGION, SERVICE = "AKIDZEROSERVETEST", "s3cr3t-0f-the-server", "eu-west-1", "lambda"

    def __init__(self) -> None:
        import http.server
        import threading

        self.verdicts: list[str] = []
        url = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                verdict = url.verify(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                url.verdicts.append(verdict)
                if verdict == "ok":
                    status, answer = 200, {"model_name": "linear", "outputs": [OUTPUT]}
                else:
                    status, answer = 403, {"message": verdict}
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def verify(self, path: str, headers: dict[str, str], body: bytes) -> str:
        import datetime
        import hmac
        import re

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        found = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            headers.get("authorization", ""),
        )
        if not found:
            return "missing or malformed Authorization"
        key, day, region, service, signed, signature = found.groups()
        stamp = headers.get("x-amz-date", "")
        if (key, region, service) != (self.ACCESS_KEY, self.REGION, self.SERVICE) or not stamp.startswith(
            day
        ):
            return "wrong credential scope"
        age = datetime.datetime.now(datetime.UTC) - datetime.datetime.strptime(
            stamp, "%Y%m%dT%H%M%SZ"
        ).replace(tzinfo=datetime.UTC)
        if abs(age.total_seconds()) > 300:
            return "request time too skewed"
        if "host" not in signed.split(";"):
            return "host is not signed"
        # The request as the client signed it: only the headers it says it signed, at the time it says.
        request = AWSRequest(
            method="POST",
            url=f"http://{headers['host']}{path}",
            data=body,
            headers={name: headers[name] for name in signed.split(";")},
        )
        request.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(self.ACCESS_KEY, self.SECRET), self.SERVICE, self.REGION)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, signature):
            return "The request signature we calculated does not match the signature you provided"
        return "ok"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


OUTPUT = {"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 1.5, 2.5]}


@pytest.mark.parametrize("secret_right", [True, False], ids=["right-secret", "wrong-secret"])
def test_sigv4_requests_verify_server_side_with_botocores_signer(tmp_path: Path, secret_right: bool) -> None:
    function = SigV4FunctionUrl()
    try:
        bench = _write(
            tmp_path / "bench.yaml",
            {
                "targets": [
                    {
                        "name": "lambda",
                        "kind": "lambda-url",
                        "url": function.url,
                        "model": "linear",
                        "auth": {"type": "sigv4", "region": SigV4FunctionUrl.REGION},
                    }
                ],
                "payload": PAYLOAD,
                "workload": {"type": "constant", "rate": 20, "duration_s": 1, "arrival": "uniform"},
            },
        )
        secret = SigV4FunctionUrl.SECRET if secret_right else "not-" + SigV4FunctionUrl.SECRET
        # Only these credentials: no profile or shared file on this machine may stand in for them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {
            "AWS_ACCESS_KEY_ID": SigV4FunctionUrl.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        out = tmp_path / "out"
        result = subprocess.run(
            [ZEROSERVE, "bench", str(bench), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        (t,) = json.loads((out / "report.json").read_text())["targets"]
        assert t["requests"] == len(function.verdicts) == 20
        if secret_right:
            assert result.returncode == 0, result.stdout + result.stderr
            assert set(function.verdicts) == {"ok"} and t["successes"] == 20
        else:
            assert result.returncode == 1
            assert set(function.verdicts) == {
                "The request signature we calculated does not match the signature you provided"
            }
            assert t["successes"] == 0 and all(e.startswith("HTTP 403") for e in t["errors"])
        assert secret not in result.stdout + result.stderr
    finally:
        function.close()


def _connected_to(pid: int, port: int) -> bool:
    import psutil

    try:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def test_remote_workers_split_one_schedule_with_no_sample_lost(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    """A master started with --remote-workers, and two `zeroserve bench-worker` processes that join it,
    as they would from other machines."""
    import time

    from zeroserve_loadgen.plan import RunPlan, schedule
    from zeroserve_loadgen.workloads import Constant

    workload = {"type": "constant", "rate": 100, "duration_s": 3, "arrival": "uniform"}
    target = {"name": "rest", "kind": "oip-rest", "url": runtime.url, "model": "linear"}
    bench = _write(tmp_path / "bench.yaml", {"targets": [target], "payload": PAYLOAD, "workload": workload})
    out, port = tmp_path / "out", _free()
    argv = [ZEROSERVE, "bench", str(bench), "--out", str(out), "--workers", "2", "--remote-workers"]
    master = subprocess.Popen(
        [*argv, "--master-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = [
        subprocess.Popen(
            [ZEROSERVE, "bench-worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        # Each worker process, not the master, opens connections to the target: both take part.
        sent_from: set[int] = set()
        while master.poll() is None and len(sent_from) < 2:
            sent_from |= {w.pid for w in workers if _connected_to(w.pid, runtime.port)}
            time.sleep(0.05)
        output, _ = master.communicate(timeout=120)
        assert master.returncode == 0, output
        assert sent_from == {w.pid for w in workers}
        for w in workers:
            assert w.wait(timeout=30) == 0, "a worker must leave when its master ends the run"
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()

    report = json.loads((out / "report.json").read_text())
    assert report["workers"] == 2
    (t,) = report["targets"]
    assert t["requests"] == t["successes"] == 300
    assert _server_counts(runtime)[0]["rest"] == 300
    # Every arrival of the one schedule came back exactly once, whichever worker sent it.
    plan = RunPlan(targets=[target], payload=PAYLOAD, workload=Constant.model_validate(workload))
    expected = sorted(round(float(x), 6) for x in schedule(plan).times)
    got = sorted(round(float(s["scheduled_s"]), 6) for s in csv.DictReader((out / "samples.csv").open()))
    assert got == expected
