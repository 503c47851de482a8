"""`zeroserve advise --validate` on real Knative: the simulation's cold starts and replica-seconds for a
ModelService against the same arrivals sent through the test cluster's ingress (#14).

    .venv/bin/python bench/advise_knative.py [--duration 360] [--predict-only]     # make bench-advise-knative

An advise file for EfficientNet-Lite0 with one Knative configuration (1 vCPU, target 1, min-scale 0) is
written whose assumptions are the test cluster's own config-autoscaler (tests/knative.py: 6 s stable
window, 6 s scale-to-zero grace, no retention) rather than Knative's production defaults, and whose MMPP
workload has quiet periods that straddle the scale-to-zero window (6 s window plus 6 s grace, on 2 s
ticks): some quiet spells end before the service reaches zero, some after, so the count tests the
timing, not just "every burst starts cold". It is profiled and simulated as `zeroserve advise` does; then
the cluster starts (a real node, Knative Serving, Traefik, the operator), the ModelService advise wrote is
applied with its model fetched from the node's bridge, and validate_knative benches it through the
ingress and prints predicted against measured.

First run (2026-11-29, this machine's 2-CPU test node, 360 s, 176 requests, seed 1): cold starts 10
predicted / 8 measured; replica-seconds 305 / 2,354; p50 12 / 736 ms; p99 1.5 / 22.5 s. The miss is the
start time: pod_start_s 1 s against cold answers of 15.5 s (median) on a node whose 2 CPUs also run the
control plane, so the activator's buffered requests panic the KPA into up to 36 replicas of 1 CPU that
the node cannot fit; they wait Pending, counted as replicas, which the simulation (no node capacity)
does not model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

# The load generator (locust, which monkey-patches with gevent) must be imported before any thread
# starts: imported later by validate_knative, with the model server's thread already up, the import
# deadlocked on a module lock and took the GIL with it, so the model server stopped answering too.
import zeroserve_loadgen.bench  # noqa: F401
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zeroserve.advise import config
from zeroserve.advise.cli import advise_loaded
from zeroserve.advise.validate import validate_knative

MODEL_NAME = "efficientnet"
NAMESPACE = "advise"


def advise_file(model: Path, duration: float, seed: int) -> dict[str, Any]:
    return {
        "model": {"path": str(model), "name": MODEL_NAME},
        "payload": "auto",
        # Quiet spells of 25 s on average at one request per 12 s: the gaps between requests are
        # exponential around the ~12-14 s it takes to reach zero, so both sides of the window occur.
        # Busy spells of 15 s at 6/s keep a replica up and exercise the KPA's averaging.
        "workload": {
            "type": "mmpp",
            "rates": [0.08, 3],
            "mean_sojourn_s": [16, 5],
            "duration_s": duration,
            "seed": seed,
        },
        "objectives": {"p99_ms": 5000, "min_success_ratio": 0.9},
        "platforms": {
            "knative": {
                "vcpu": [1],
                "min_scale": [0],
                "target": [1],
                "max_batch_size": [1],
                "scale_to_zero_retention_s": [0],
                "node": "aws-c7i.xlarge",
                # The test cluster's config-autoscaler (tests/knative.py TEST_AUTOSCALER), not Knative's
                # defaults: the simulation must model the cluster it is checked against.
                "assumptions": {"stable_window_s": 6, "scale_to_zero_grace_s": 6, "tick_s": 2},
            },
            "lambda": {"enabled": False},
            "cloud_run": {"enabled": False},
            "always_on": {"enabled": False},
        },
        "profile": {"batch_sizes": [1]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=360, help="seconds of MMPP load (default 360)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("zeroserve-advise-knative"))
    parser.add_argument(
        "--predict-only", action="store_true", help="profile and simulate; do not start the cluster"
    )
    args = parser.parse_args()

    from modelhost import SHARED_MODELS, serve_models

    console = Console()
    if not console.is_terminal:
        console.width = 150
    model = SHARED_MODELS / "efficientnet-lite0.onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "advise.yaml"
    path.write_text(yaml.safe_dump(advise_file(model, args.duration, args.seed), sort_keys=False))
    loaded = config.load(path)
    profile, advice, _ = advise_loaded(loaded, args.out, console, top=1)
    if args.predict_only:
        from zeroserve.advise.validate import predict_knative

        pred = predict_knative(loaded, profile, advice, args.duration)
        print(json.dumps(pred, indent=1))
        return 0

    import knative
    from controlplane import Binaries, ControlPlane, default_cache_dir
    from node import Images
    from pods import service_address, wait_for
    from release import install_operator

    ms = yaml.safe_load(advice.settings["knative"])
    name = ms["metadata"]["name"]
    binaries = Binaries.from_cache()
    images = Images.from_cache(default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="zeroserve-advise-") as tmp:
        plane = ControlPlane(binaries, Path(tmp), images=images)
        print("starting the cluster: etcd, API server, controllers, a node ...", flush=True)
        with plane:
            knative.install(plane)
            print("  Knative ready; installing the operator (helm) ...", flush=True)
            install_operator(plane, "zeroserve", "zeroserve-system")
            plane.kubectl("create", "namespace", NAMESPACE)
            with serve_models(SHARED_MODELS) as base:
                # The ModelService exactly as advise wrote it, but for where the model comes from.
                ms["metadata"]["namespace"] = NAMESPACE
                ms["spec"]["model"]["uri"] = f"{base}/{model.name}"
                (args.out / "modelservice-applied.yaml").write_text(yaml.safe_dump(ms, sort_keys=False))
                knative.apply(plane, [ms])
                wait_for(lambda: _ready(plane, name), within=300, what="the ModelService")
                host = f"{name}.{NAMESPACE}.{knative.DOMAIN}"
                selector = f"serving.knative.dev/service={name}"
                # Start from zero, as the simulation does with min-scale 0.
                wait_for(lambda: not _pods(plane, selector), within=300, what=f"{name} at zero", interval=0.5)
                ingress = service_address(plane, knative.TRAEFIK_NAMESPACE, "traefik")
                print(f"  {name} at zero; benching {args.duration:g} s of MMPP through {ingress}", flush=True)
                started = time.monotonic()
                compared = validate_knative(
                    loaded,
                    profile,
                    advice,
                    url=f"http://{ingress}",
                    namespace=NAMESPACE,
                    selector=selector,
                    out=args.out / "validate",
                    console=console,
                    duration=args.duration,
                    host=host,
                    kubeconfig=plane.kubeconfig,
                )
                print(f"  bench took {time.monotonic() - started:.0f} s", flush=True)
    print(json.dumps({"misses": compared.misses()}, indent=1))
    return 0 if not compared.misses() else 1


def _ready(plane: Any, name: str) -> bool:
    got = plane.kubectl("get", "modelservice", name, "-n", NAMESPACE, "-o", "json", check=False)
    if got.returncode:
        return False
    conds = json.loads(got.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _pods(plane: Any, selector: str) -> list[str]:
    got = plane.kubectl(
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        selector,
        "-o",
        "jsonpath={.items[*].metadata.name}",
        check=False,
    )
    return got.stdout.split()


if __name__ == "__main__":
    sys.exit(main())
