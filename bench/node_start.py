"""The test cluster with a real node, measured: how long the cluster takes to start with a Ready node, and
how long a runtime pod takes from `create` to its first successful inference, phase by phase.

    .venv/bin/python bench/node_start.py [--starts 3] [--pods 7]      # make bench-node (root)

The pod runs the runtime image under exactly the container spec the operator builds for a ModelService
serving EfficientNet-Lite0 (../shared/models), fetched with its sha256 from an HTTP server on the node's
bridge: the image is on the node and so is the model. Phases come from a watch on the pod (scheduled,
sandbox and network ready, container running, Ready) and from the runtime's own cold-start metrics
(timed from its process start); the first inference is sent straight to the pod's IP every 10 ms from
the moment it has one, so it does not wait for kubelet's readiness probe.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import Binaries, ControlPlane, default_cache_dir
from kubernetes import client, config, watch
from modelhost import SHARED_MODELS, serve_models, sha256_of
from node import Images
from pods import modelservice, revision_template
from zeroserve_operator.resources.knative import build_knative_service
from zeroserve_operator.settings import OperatorSettings

MODEL = SHARED_MODELS / "efficientnet-lite0.onnx"
START_PHASES = (
    "host-network",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "node:containerd",
    "node:images",
    "node:node-ready",
    "knative-crds",
    "total",
)
# Seconds from create, in the order they happen: scheduled, the runtime's process started (its own clock),
# kubelet's first status with the pod's address and the container running, the runtime ready (its own
# clock), the first inference answered, and kubelet's Ready (after its 1 s readiness probe period).
POD_PHASES = ("scheduled", "process-start", "sandbox", "running", "runtime-ready", "first-inference", "ready")
RUNTIME_PHASES = ("runtime import", "runtime fetch", "runtime load", "runtime warmup", "runtime total")
GOAL_POD_SECONDS = 2.0


def pod_manifest(images: Images, model_url: str, name: str, namespace: str) -> dict:
    """A bare Pod with the operator's revision template: what Knative's Deployment would create."""
    body = modelservice(name, namespace, f"{model_url}/{MODEL.name}", model={"sha256": sha256_of(MODEL)})
    template = revision_template(build_knative_service(body, OperatorSettings(onnx_image=images.runtime)))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **template["metadata"]},
        "spec": template["spec"],
    }


def inference_body() -> bytes:
    x = np.zeros((1, 3, 224, 224), dtype=np.float32)
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def measure_pod(
    plane: ControlPlane, core: client.CoreV1Api, images: Images, model_url: str, ns: str, body: bytes
) -> dict[str, float]:
    name = f"cold-{uuid.uuid4().hex[:6]}"
    seen: dict[str, float] = {}
    ip: list[str] = []
    done = threading.Event()

    def watch_pod() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod, ns, field_selector=f"metadata.name={name}", timeout_seconds=60
        ):
            now = time.monotonic()
            pod = event["object"]
            conditions = {c.type: c.status for c in pod.status.conditions or []}
            if pod.spec.node_name:
                seen.setdefault("scheduled", now)
            if pod.status.pod_ip:
                seen.setdefault("sandbox", now)
                if not ip:
                    ip.append(pod.status.pod_ip)
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running:
                seen.setdefault("running", now)
            if conditions.get("Ready") == "True":
                seen.setdefault("ready", now)
                w.stop()
            if done.is_set() and "ready" in seen:
                w.stop()

    def first_inference() -> None:
        while not ip and not done.is_set():
            time.sleep(0.005)
        url = f"http://{ip[0]}:8080/v2/models/{name}/infer"
        while not done.is_set():
            try:
                sent = time.monotonic()
                with urllib.request.urlopen(urllib.request.Request(url, body), timeout=5) as r:
                    if r.status == 200:
                        seen["first-inference"] = time.monotonic()
                        # The runtime's own clock: its process started init + ready-age before this
                        # request arrived (on the node's bridge, as good as when it was sent).
                        init = float(r.headers["x-zeroserve-init-seconds"])
                        ready_age = float(r.headers["x-zeroserve-ready-age-seconds"])
                        seen["process-start"] = sent - ready_age - init
                        seen["runtime-ready"] = sent - ready_age
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_pod, daemon=True)
    watcher.start()
    time.sleep(0.2)  # the watch is open before the pod exists
    sender = threading.Thread(target=first_inference, daemon=True)
    sender.start()
    t0 = time.monotonic()
    core.create_namespaced_pod(ns, pod_manifest(images, model_url, name, ns))
    sender.join(60)
    watcher.join(60)
    done.set()
    metrics = plane.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}:8080/proxy/metrics").stdout
    phase_sums = r'^zeroserve_cold_start_seconds_sum\{[^}]*phase="(\w+)"\} ([0-9.e-]+)$'
    phases = dict(re.findall(phase_sums, metrics, re.M))
    core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    result = {k: v - t0 for k, v in seen.items()}
    # How long each of the runtime's own phases took (they overlap: the model loads while it imports).
    result.update({f"runtime {k}": float(v) for k, v in phases.items()})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=3, help="cluster starts (the first is cold)")
    parser.add_argument("--pods", type=int, default=7, help="runtime pods created one after another")
    args = parser.parse_args()
    binaries = Binaries.from_cache()
    images = Images.from_cache(default_cache_dir())

    starts: list[dict[str, float]] = []
    for i in range(args.starts):
        with tempfile.TemporaryDirectory(prefix="zeroserve-bench-node-") as tmp:
            plane = ControlPlane(binaries, Path(tmp), images=images)
            with plane:
                starts.append(dict(plane.timings))
                print(f"start {i + 1}/{args.starts}: total {plane.timings['total']:.2f}s", flush=True)
                if i == args.starts - 1:
                    samples = run_pods(plane, images, args.pods)

    print(f"\ncluster start with a Ready node (Kubernetes {binaries.versions['K8S_VERSION']}), seconds")
    print(f"{'phase':<26}{'cold':>8}{'warm med':>10}")
    for phase in START_PHASES:
        warm = [s[phase] for s in starts[1:] if phase in s]
        print(
            f"{phase:<26}{starts[0].get(phase, float('nan')):>8.2f}"
            f"{statistics.median(warm) if warm else float('nan'):>10.2f}"
        )

    print(f"\nruntime pod, create to first successful inference ({len(samples)} pods), seconds from create")
    print(f"{'phase':<26}{'median':>8}{'min':>8}{'max':>8}")
    for phase in (*POD_PHASES, *RUNTIME_PHASES):
        xs = [s[phase] for s in samples if phase in s]
        if xs:
            print(f"{phase:<26}{statistics.median(xs):>8.3f}{min(xs):>8.3f}{max(xs):>8.3f}")
    first = statistics.median(s["first-inference"] for s in samples)
    print(
        f"\ngoal {GOAL_POD_SECONDS:.1f}s to first inference: median {first:.2f}s "
        f"({'met' if first <= GOAL_POD_SECONDS else 'MISSED'})"
    )
    sizes = {ref: path.stat().st_size / 2**20 for ref, path in images.archives.items()}
    print("\nimage archives: " + ", ".join(f"{ref} {mb:.0f} MiB" for ref, mb in sizes.items()))
    return 0 if first <= GOAL_POD_SECONDS else 1


def run_pods(plane: ControlPlane, images: Images, count: int) -> list[dict[str, float]]:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core = client.CoreV1Api(api)
    ns = "bench"
    plane.kubectl("create", "namespace", ns)
    body = inference_body()
    samples = []
    with serve_models(SHARED_MODELS) as model_url:
        # One pod first, untimed: the first container from an image pays for unpacking its layers.
        measure_pod(plane, core, images, model_url, ns, body)
        for i in range(count):
            sample = measure_pod(plane, core, images, model_url, ns, body)
            samples.append(sample)
            print(
                f"pod {i + 1}/{count}: "
                + "  ".join(f"{k} {v:.3f}" for k, v in sorted(sample.items(), key=lambda kv: kv[1])),
                flush=True,
            )
            time.sleep(1)
    return samples


if __name__ == "__main__":
    sys.exit(main())
