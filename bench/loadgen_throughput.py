"""How fast the load generator is, against a trivial local endpoint (nginx returning a constant), side by
side in one run, in interleaved rounds:

  wrk          wrk -t1, the ceiling
  locust       a bare locust FastHttpUser locustfile with no wait, one process
  zeroserve    `zeroserve bench` driving the same endpoint, one process
  locust x2    the bare locustfile with --processes 2
  zeroserve x2 `zeroserve bench --workers 2` (a locust master and two workers)

All post the same OIP v2 JSON body with 32 requests in flight. `zeroserve bench` runs a constant
workload far above what it can send, so its pool of in-flight requests is always full: its throughput
is what one process can do.

    .venv/bin/python bench/loadgen_throughput.py [--seconds 5] [--rounds 3]
Needs nginx and wrk (apt-get install nginx-light wrk).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import free_port
from runtime_throughput import wrk

CONCURRENCY = 32
BIN = Path(sys.executable).parent
BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
RESPONSE = '{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[1]}]}'

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{response}'; }}
  }}
}}
"""

LOCUSTFILE = """
from locust import FastHttpUser, task

BODY = {body!r}


class Bare(FastHttpUser):
    @task
    def infer(self):
        self.client.post("/v2/models/m/infer", data=BODY, headers={{"Content-Type": "application/json"}})
"""


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, response=RESPONSE))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def bare_locust(url: str, seconds: float, processes: int, tmp: Path) -> float:
    locustfile = tmp / "bare.py"
    locustfile.write_text(LOCUSTFILE.format(body=BODY))
    prefix = tmp / f"bare{processes}"
    cmd = [
        str(BIN / "locust"),
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(CONCURRENCY),
        "-r",
        str(CONCURRENCY),
        "-t",
        f"{seconds:.0f}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "ERROR",
    ]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=seconds + 60)
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    if int(row["Failure Count"]):
        raise RuntimeError(f"bare locust saw {row['Failure Count']} failures")
    return float(row["Requests/s"])


def zeroserve_bench(url: str, seconds: float, workers: int, tmp: Path) -> float:
    out = tmp / f"zs{workers}"
    bench = tmp / "bench.yaml"
    bench.write_text(
        yaml.safe_dump(
            {
                "targets": [{"name": "nginx", "kind": "oip-rest", "url": url, "model": "m"}],
                "payload": orjson.loads(BODY),
                # Far more than one process can send: the in-flight pool stays full, as locust's users do.
                "workload": {"type": "constant", "rate": 60000, "duration_s": seconds, "arrival": "uniform"},
            }
        )
    )
    # Each worker holds CONCURRENCY / workers requests in flight, so every setup has 32 in total.
    cmd = [str(BIN / "zeroserve"), "bench", str(bench), "--out", str(out)]
    cmd += ["--max-in-flight", str(CONCURRENCY // max(workers, 1))]
    if workers:
        cmd += ["--workers", str(workers), "--master-port", str(free_port())]
    subprocess.run(cmd, check=True, capture_output=True, timeout=seconds * 20 + 120)
    with (out / "samples.csv").open() as f:
        rows = [(float(r["sent_s"]), float(r["latency_s"]), r["ok"] == "True") for r in csv.DictReader(f)]
    if not all(ok for _, _, ok in rows):
        raise RuntimeError("zeroserve bench saw failures")
    # Cut the first and last second: start-up and the tail of the schedule are not steady state.
    start = min(s for s, _, _ in rows) + 1
    end = max(s + lat for s, lat, _ in rows) - 1
    done = sum(1 for s, lat, _ in rows if start <= s + lat < end)
    return done / (end - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install nginx-light wrk")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        nginx, port = start_nginx(tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            setups = {
                "wrk": lambda: wrk(f"{url}/v2/models/m/infer", BODY, {}, CONCURRENCY, args.seconds, tmp)[
                    "rps"
                ],
                "locust": lambda: bare_locust(url, args.seconds, 1, tmp),
                "zeroserve": lambda: zeroserve_bench(url, args.seconds, 0, tmp),
                "locust x2": lambda: bare_locust(url, args.seconds, 2, tmp),
                "zeroserve x2": lambda: zeroserve_bench(url, args.seconds, 2, tmp),
            }
            for r in range(args.rounds):
                for name, fn in setups.items():
                    value = fn()
                    results.setdefault(name, []).append(value)
                    print(f"round {r + 1} {name:<13} {value:10.0f} req/s", flush=True)
        finally:
            nginx.terminate()
            nginx.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    print("\nmedian of rounds")
    for name, value in med.items():
        print(f"  {name:<13} {value:10.0f} req/s")
    print(f"\nzeroserve / bare locust, one process: {med['zeroserve'] / med['locust']:.0%} (goal >= 80%)")
    print(f"zeroserve x2 / zeroserve x1:          {med['zeroserve x2'] / med['zeroserve']:.2f}x")
    print(f"locust x2 / locust x1:                {med['locust x2'] / med['locust']:.2f}x")
    print(f"bare locust / wrk:                    {med['locust'] / med['wrk']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
