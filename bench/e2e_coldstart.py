"""Scale from zero to the first successful inference, through Knative's activator, on the test cluster:
a real node, Knative Serving's own components, Traefik as the ingress, and the operator from the chart.

    .venv/bin/python bench/e2e_coldstart.py [--runs 7]     # make bench-e2e; `make e2e` runs it once

A ModelService serving EfficientNet-Lite0 (../shared/models, fetched with its sha256 from an HTTP server
on the node's bridge, so the image and the model are both on the node) is applied as a user would. Beside
it runs the floor: a Knative Service on the same image and the same model served by raw onnxruntime in a
20-line HTTP server. For each run, the service is left to scale to zero, then one inference is sent
through the ingress; the time to its answer is broken down from a watch on the cluster (the scale
decision is the Deployment's replicas going from 0 to 1; then pod scheduled, sandbox with an address,
container running, Ready) and the runtime's own cold-start phases. Warm latency is then measured through
the ingress (Traefik, activator or not, queue-proxy) and straight to the pod.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import knative
from controlplane import Binaries, ControlPlane, default_cache_dir
from kubernetes import client, config, watch
from modelhost import SHARED_MODELS, serve_models, sha256_of
from node import Images
from pods import RESTRICTED, node_model_cache, ready_object, service_address, wait_for
from release import install_operator

MODEL = SHARED_MODELS / "efficientnet-lite0.onnx"
NAMESPACE = "e2e"
READY_AFTER_ANSWER_S = 15.0
PHASES = ("scale-decision", "scheduled", "sandbox", "running", "ready", "answer")
# The runtime's own, in seconds from its process start (they overlap: the model loads while it imports).
RUNTIME_PHASES = ("runtime-import", "runtime-fetch", "runtime-load", "runtime-warmup", "runtime-total")
GOAL_SECONDS, GOAL_RATIO = 1.5, 1.25
BURST = 20

# The floor: the least a Knative Service can do to serve this model. Same image, same model source.
FLOOR_SERVER = """
import hashlib, http.server, json, os, signal, sys, urllib.request
import numpy as np, onnxruntime as ort
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
data = urllib.request.urlopen(os.environ["MODEL_URL"]).read()
assert hashlib.sha256(data).hexdigest() == os.environ["MODEL_SHA256"]
session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = np.asarray(req["inputs"][0]["data"], dtype=np.float32).reshape(req["inputs"][0]["shape"])
        y = session.run(None, {"input": x})[0]
        body = json.dumps({"outputs": [{"name": "logits", "shape": list(y.shape), "datatype": "FP32",
                                        "data": y.ravel().tolist()}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""


def floor_ksvc(images: Images, model_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "floor"},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                "spec": {
                    "containers": [
                        {
                            "image": images.runtime,
                            "command": ["/opt/zeroserve/bin/python", "-c", FLOOR_SERVER],
                            "env": [
                                {"name": "MODEL_URL", "value": model_url},
                                {"name": "MODEL_SHA256", "value": sha256_of(MODEL)},
                            ],
                            "ports": [{"name": "http1", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 0},
                            "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Gi"}},
                            "securityContext": {**RESTRICTED, "runAsUser": 1000},
                        }
                    ]
                },
            }
        },
    }


def modelservice(model_url: str, cache: dict[str, str] | None = None) -> dict[str, Any]:
    model = {"uri": model_url, "sha256": sha256_of(MODEL), **({"cache": cache} if cache else {})}
    return {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "effnet"},
        "spec": {"model": model, "resources": {"memory": "1Gi"}},
    }


def infer_body() -> bytes:
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def post(url: str, body: bytes, host: str | None = None, timeout: float = 120) -> tuple[int, dict[str, str]]:
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers=headers), timeout=timeout) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {}


@contextlib.contextmanager
def _stopped_quietly() -> Iterator[None]:
    # Stopping a watch closes its stream under the reader, which urllib3 reports as a broken response.
    with contextlib.suppress(urllib3.exceptions.ProtocolError):
        yield


class Timeline:
    """Times, from a watch on the service's Deployment and pods, of each step of one scale from zero."""

    def __init__(self, api: client.ApiClient, service: str) -> None:
        self.seen: dict[str, float] = {}
        self.selector = f"serving.knative.dev/service={service}"
        self._stops: list[watch.Watch] = []
        self._threads = [
            threading.Thread(target=self._deployments, args=(client.AppsV1Api(api),), daemon=True),
            threading.Thread(target=self._pods, args=(client.CoreV1Api(api),), daemon=True),
        ]

    def __enter__(self) -> Timeline:
        for t in self._threads:
            t.start()
        time.sleep(0.3)  # both watches open before the request goes out
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self._stops:
            w.stop()

    def _deployments(self, apps: client.AppsV1Api) -> None:
        with _stopped_quietly():
            self._watch_deployments(apps)

    def _pods(self, core: client.CoreV1Api) -> None:
        with _stopped_quietly():
            self._watch_pods(core)

    def _watch_deployments(self, apps: client.AppsV1Api) -> None:
        w = watch.Watch()
        self._stops.append(w)
        for event in w.stream(
            apps.list_namespaced_deployment, NAMESPACE, label_selector=self.selector, timeout_seconds=300
        ):
            if (event["object"].spec.replicas or 0) > 0:
                self.seen.setdefault("scale-decision", time.monotonic())

    def _watch_pods(self, core: client.CoreV1Api) -> None:
        w = watch.Watch()
        self._stops.append(w)
        for event in w.stream(
            core.list_namespaced_pod, NAMESPACE, label_selector=self.selector, timeout_seconds=300
        ):
            pod, now = event["object"], time.monotonic()
            if pod.metadata.deletion_timestamp:
                continue
            if pod.spec.node_name:
                self.seen.setdefault("scheduled", now)
            if pod.status.pod_ip:
                self.seen.setdefault("sandbox", now)
            # The model server: every container but Knative's queue-proxy (Knative keeps the name given).
            user = [s for s in pod.status.container_statuses or [] if s.name != "queue-proxy"]
            if user and user[0].state.running:
                self.seen.setdefault("running", now)
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                self.seen.setdefault("ready", now)


def pods_of(core: client.CoreV1Api, service: str) -> list[Any]:
    return [
        p
        for p in core.list_namespaced_pod(
            NAMESPACE, label_selector=f"serving.knative.dev/service={service}"
        ).items
        if not p.metadata.deletion_timestamp
    ]


def runtime_phases(plane: ControlPlane, service: str) -> dict[str, float]:
    """The runtime's own cold-start phases (seconds, from its process start) and model-cache counters,
    from its /metrics through the API server's pod proxy."""
    got = plane.kubectl(
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        f"serving.knative.dev/service={service}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
        check=False,
    )
    if got.returncode or not got.stdout:
        return {}
    metrics = plane.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{got.stdout}:8080/proxy/metrics", check=False
    ).stdout
    phase_sums = r'^zeroserve_cold_start_seconds_sum\{[^}]*phase="(\w+)"\} ([0-9.e-]+)$'
    found = {f"runtime-{k}": float(v) for k, v in re.findall(phase_sums, metrics, re.M)}
    for kind in ("hits", "misses"):
        if m := re.search(rf"^zeroserve_model_cache_{kind}_total\{{[^}}]*\}} ([0-9.]+)$", metrics, re.M):
            found[f"cache-{kind}"] = float(m.group(1))
    return found


def burst_at_zero(
    api: client.ApiClient, ingress: str, host: str, path: str, body: bytes, n: int = BURST
) -> int:
    """n requests at once at zero replicas, all held by the activator through one cold start: how many
    got a 200."""
    service = host.split(".")[0]
    core = client.CoreV1Api(api)
    wait_for(lambda: not pods_of(core, service), within=300, what=f"{service} at zero replicas", interval=0.5)
    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(lambda _: post(f"http://{ingress}{path}", body, host)[0], range(n)))
    return sum(s == 200 for s in statuses)


def cold_start(
    api: client.ApiClient, ingress: str, host: str, path: str, body: bytes, idle_since: float
) -> dict[str, Any]:
    """One scale from zero; `idle_since` is when the service last answered, for the time back to zero."""
    core = client.CoreV1Api(api)
    service = host.split(".")[0]
    wait_for(
        lambda: (
            not core.list_namespaced_pod(
                NAMESPACE, label_selector=f"serving.knative.dev/service={service}"
            ).items
        ),
        within=300,
        what=f"{service} at zero replicas",
        interval=0.5,
    )
    to_zero = time.monotonic() - idle_since
    with Timeline(api, service) as timeline:
        t0 = time.monotonic()
        status, headers = post(f"http://{ingress}{path}", body, host)
        timeline.seen["answer"] = time.monotonic()
        # The activator probes a starting pod itself and lets the request through before the kubelet's
        # readiness probe (every second) makes the pod Ready: keep watching a while, so that a Ready after
        # the answer is observed rather than lost.
        deadline = time.monotonic() + READY_AFTER_ANSWER_S
        while "ready" not in timeline.seen and time.monotonic() < deadline:
            time.sleep(0.05)
    if status != 200:
        raise RuntimeError(f"cold request to {host} answered {status}")
    result: dict[str, Any] = {k: v - t0 for k, v in timeline.seen.items()}
    result["to-zero"] = to_zero
    result["cold-header"] = headers.get("x-zeroserve-cold-start") == "1"
    if "x-zeroserve-init-seconds" in headers:
        result["runtime-init"] = float(headers["x-zeroserve-init-seconds"])
    return result


def warm_latency(
    ingress: str, host: str, path: str, body: bytes, pod_ip: str, n: int = 40
) -> tuple[float, float]:
    """p50 ms through the ingress (and Knative's proxies), and straight to the pod's user container."""

    def p50(url: str, h: str | None) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            status, _ = post(url, body, h)
            assert status == 200
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    return p50(f"http://{ingress}{path}", host), p50(f"http://{pod_ip}:8080{path}", None)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="cold starts per service (default 7)")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    parser.add_argument(
        "--model-cache",
        action="store_true",
        help="also a third service, the same ModelService with the node-local model cache "
        "(examples/model-cache-node.yaml), so cold starts with and without it are compared in one run",
    )
    parser.add_argument(
        "--model-mbps",
        type=float,
        help="hold model downloads to this many MB/s, as from a bucket across a network (default: as "
        "fast as the node's bridge)",
    )
    args = parser.parse_args()

    binaries = Binaries.from_cache()
    images = Images.from_cache(default_cache_dir())
    body = infer_body()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="zeroserve-e2e-") as tmp:
        plane = ControlPlane(binaries, Path(tmp), images=images)
        print("starting the cluster: etcd, API server, controllers, a node ...", flush=True)
        with plane:
            print(
                f"  cluster ready in {plane.timings['total']:.1f}s; installing Knative, CoreDNS, Traefik ...",
                flush=True,
            )
            timings = knative.install(plane)
            print(
                f"  Knative ready in {timings['traefik']:.1f}s; installing the operator (helm) ...",
                flush=True,
            )
            install_operator(plane, "zeroserve", "zeroserve-system")
            plane.kubectl("create", "namespace", NAMESPACE)
            api = config.new_client_from_config(config_file=str(plane.kubeconfig))
            rate = args.model_mbps * 1e6 if args.model_mbps else None
            with contextlib.ExitStack() as stack:
                base = stack.enter_context(serve_models(SHARED_MODELS, bytes_per_second=rate))
                url = f"{base}/{MODEL.name}"
                knative.apply(
                    plane, [dict(modelservice(url), metadata={"name": "effnet", "namespace": NAMESPACE})]
                )
                if args.model_cache:
                    knative.set_features(
                        plane, persistent_volume_claim="enabled", persistent_volume_write="enabled"
                    )
                    _, cache = stack.enter_context(node_model_cache(plane, NAMESPACE))
                    cached = dict(
                        modelservice(url, cache), metadata={"name": "cached", "namespace": NAMESPACE}
                    )
                    knative.apply(plane, [cached])
                knative.apply(
                    plane, [dict(floor_ksvc(images, url), metadata={"name": "floor", "namespace": NAMESPACE})]
                )
                ms = wait_for(
                    lambda: ready_object(plane, "modelservice", "effnet", NAMESPACE),
                    within=300,
                    what="the ModelService",
                )
                wait_for(
                    lambda: ready_object(plane, "ksvc", "floor", NAMESPACE),
                    within=300,
                    what="the floor service",
                )
                if args.model_cache:
                    wait_for(
                        lambda: ready_object(plane, "modelservice", "cached", NAMESPACE),
                        within=300,
                        what="cached",
                    )
                print(f"  ModelService Ready at {ms['status']['url']}", flush=True)
                ingress = service_address(plane, knative.TRAEFIK_NAMESPACE, "traefik")
                targets = {
                    "zeroserve": (f"effnet.{NAMESPACE}.{knative.DOMAIN}", "/v2/models/effnet/infer"),
                    "floor": (f"floor.{NAMESPACE}.{knative.DOMAIN}", "/"),
                }
                if args.model_cache:
                    targets["cached"] = (f"cached.{NAMESPACE}.{knative.DOMAIN}", "/v2/models/cached/infer")
                samples: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
                last_answer = {name: time.monotonic() for name in targets}
                warm: dict[str, tuple[float, float]] = {}
                for run in range(args.runs):
                    for name, (host, path) in targets.items():  # interleaved: same conditions for both
                        sample = cold_start(api, ingress, host, path, body, last_answer[name])
                        last_answer[name] = time.monotonic()
                        if name != "floor":
                            sample.update(runtime_phases(plane, host.split(".")[0]))
                        samples[name].append(sample)
                        print(
                            f"  run {run + 1}/{args.runs} {name}: answer {sample['answer']:.2f}s "
                            f"(ready {ready_text(sample)}), "
                            f"to zero {sample['to-zero']:.0f}s",
                            flush=True,
                        )
                        if run == args.runs - 1:
                            (pod,) = pods_of(client.CoreV1Api(api), host.split(".")[0])
                            warm[name] = warm_latency(ingress, host, path, body, pod.status.pod_ip)
                host, path = targets["zeroserve"]
                burst_ok = burst_at_zero(api, ingress, host, path, body)
                print(f"  burst of {BURST} requests at zero replicas: {burst_ok} answered 200", flush=True)
    report(samples, warm, time.monotonic() - started, args.json)
    if burst_ok != BURST:
        return 1
    # Every cold request must have been a real cold start, as the runtime itself saw it.
    zeroserve = [s for name, runs in samples.items() if name != "floor" for s in runs]
    return 0 if all(s["cold-header"] for s in zeroserve) else 1


def ready_text(sample: dict[str, Any]) -> str:
    return f"{sample['ready']:.2f}s" if "ready" in sample else f"not seen within {READY_AFTER_ANSWER_S:g} s"


def phase_cell(values: list[float | None]) -> tuple[str, int]:
    """A phase's median over the runs that observed it, and how many did not: a phase seen in only some
    runs says so beside its median, and one seen in none says that instead of a number."""
    seen = [v for v in values if v is not None]
    missing = len(values) - len(seen)
    if not seen:
        return "not seen", missing
    median = f"{statistics.median(seen):.3f}"
    return (f"{median} ({len(seen)}/{len(values)})" if missing else median), missing


def report(
    samples: dict[str, list[dict[str, Any]]],
    warm: dict[str, tuple[float, float]],
    total: float,
    json_path: Path | None,
) -> None:
    print(
        "\ncold start through the activator, seconds after the request "
        f"({len(samples['zeroserve'])} runs, median)"
    )
    print(f"{'phase':<16}" + "".join(f"{n:>16}" for n in samples))
    unseen = []
    for phase in (*PHASES, "runtime-init", *RUNTIME_PHASES, "to-zero"):
        cells = []
        for n in samples:
            if n == "floor" and phase in ("runtime-init", *RUNTIME_PHASES):
                cells.append("-")  # raw onnxruntime has no Zeroserve runtime to report them
                continue
            cell, missing = phase_cell([s.get(phase) for s in samples[n]])
            cells.append(cell)
            if missing:
                unseen.append(f"{phase} in {missing} of {len(samples[n])} {n} runs")
        print(f"{phase:<16}" + "".join(f"{c:>16}" for c in cells))
    if unseen:
        print("not observed (a median over the runs that saw it, with how many): " + "; ".join(unseen))
    zs = statistics.median(s["answer"] for s in samples["zeroserve"])
    floor = statistics.median(s["answer"] for s in samples["floor"])
    print(
        "\nwarm p50 ms, through the ingress / straight to the pod: "
        + ", ".join(f"{n} {w[0]:.1f} / {w[1]:.1f}" for n, w in warm.items())
    )
    print(
        f"goals: <= {GOAL_SECONDS} s absolute ({'met' if zs <= GOAL_SECONDS else 'MISSED'}), "
        f"<= {GOAL_RATIO}x the floor: {zs / floor:.2f}x ({'met' if zs <= GOAL_RATIO * floor else 'MISSED'})"
    )
    to_zero = statistics.median(s["to-zero"] for s in samples["zeroserve"])
    if "cached" in samples:
        cached = statistics.median(s["answer"] for s in samples["cached"])
        hits = sum(s.get("cache-hits", 0) for s in samples["cached"])
        print(
            f"node model cache: cold start {cached:.2f} s with it, {zs:.2f} s without ({cached / zs:.2f}x); "
            f"{hits:.0f} of {len(samples['cached'])} cold starts were cache hits"
        )
    if json_path:
        json_path.write_text(json.dumps({"samples": samples, "warm_ms": warm}, indent=1))
    print(f"(whole run {total:.0f}s)")
    print(
        f"e2e ok: cold start {zs:.2f} s (floor {floor:.2f} s), warm p50 {warm['zeroserve'][0]:.0f} ms, "
        f"back to zero in {to_zero:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
