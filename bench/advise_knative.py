"""`zeroserve advise --validate` on real Knative: the simulation's cold starts and replica-seconds for a
ModelService against the same arrivals sent through the test cluster's ingress (#14).

    .venv/bin/python bench/advise_knative.py [--duration 600] [--vcpu 0.5] [--target 2] [--seed 1]
        [--predict-only [--node-free-vcpu 1.2]]                                 # make bench-advise-knative

An advise file for EfficientNet-Lite0 with one Knative configuration (min-scale 0) is written whose
assumptions are the test cluster's own config-autoscaler (tests/knative.py: 6 s stable window, 6 s
scale-to-zero grace, no retention) rather than Knative's production defaults, and whose MMPP workload has
quiet periods that straddle the time to reach zero: some quiet spells end before the service is at zero,
some after, so the count tests the timing, not just "every burst starts cold". It is profiled (before the
cluster starts, on a quiet machine) and simulated as `zeroserve advise` does. Then the cluster starts (a
real node, Knative Serving, Traefik, the operator); the node's room for replicas (its allocatable CPU
less the system pods' requests) goes into the file as max_nodes 1 and node_free_vcpu, the ModelService
advise wrote is applied with its model fetched from the node's bridge, and validate_knative measures the
cluster's pod start from one request at zero, simulates again with it, benches the service through the
ingress and prints predicted against measured. A watch records every pod's created, scheduled, ready,
told-to-go and gone times (pods.json) to tell a slow start from a wait for room.

Runs on 2026-11-29, this machine's 2-CPU test node (1.2 CPU left for replicas), 600 s unless said:

    config                  seed  cold starts pred / meas   replica-seconds pred / meas
    0.5 vCPU, target 2      1     22.2 / 21   (+6%)         305 / 313   (-3%)    pod_start_s 1.0 (assumed)
    0.5 vCPU, target 2      2     20.8 / 20   (+4%)         402 / 389   (+3%)    pod_start_s 0.57 (measured)
    1 vCPU, target 1        1     14.8 / 15   (-2%)         195 / 154   (+27%)   pod_start_s 1.0
    1 vCPU, target 1        2     13.0 / 10   (+30%)        246 / 221   (+11%)   pod_start_s 1.0
    1 vCPU, target 1, 360 s 1      9.5 / 7    (+36%)        116 / 133   (-13%)   pod_start_s 1.0

On 2026-11-30, the same node, after the bench dropped its own wait for zero:

    0.5 vCPU, target 2      2     20.8 / 20   (+4%)         401 / 396   (+1%)    pod_start_s 0.49 (measured)
    0.5 vCPU, target 2      3     19.2 / 7    (+174%)       369 / 363   (+2%)    pod_start_s 1.12 (measured)
    0.5 vCPU, target 2      3     19.2 / 20   (-4%)         368 / 349   (+5%)    pod_start_s 0.82 (measured)
    0.5 vCPU, target 2      3     20.2 / 20   (+1%)         376 / 371   (+1%)    pod_start_s 0.53 (measured)
    0.5 vCPU, target 2      4     19.8 / 17   (+16%)        346 / 375   (-8%)    pod_start_s 0.79 (measured)

The first seed 3 run (p50 4.4 s against 11.7 ms predicted; starts waited 18 s for room, 161 of 190 pods
never scheduled) did not recur in two reruns of the same arrivals; it ran a minute after a full CI run on
this machine, with the runtime's earlier drain, and its pods.json was lost, so its cause is not known.
Seed 4 missed on one burst the cluster started warm where 7 of 8 simulated tick phases started cold: its
replica became Ready (to Kubernetes) 9.5 s after its first answer, since the operator's readiness probe was
Knative's periodSeconds 0, which the kubelet runs every 10 s, and the autoscaler lets a revision go to
zero only once it has been active a stable window. The rest were bursts at the scale-to-zero edge, where
the simulated phases split too. With the probe every second and that rule simulated:

    0.5 vCPU, target 2      4     19.0 / 19   (+0%)         350 / 326   (+7%)    pod_start_s 0.70 (measured)
    0.5 vCPU, target 2      5     21.5 / 23   (-7%)         331 / 368   (-10%)   pod_start_s 0.94 (measured)
    0.5 vCPU, target 2      1     21.2 / 24   (-12%)        316 / 290   (+9%)    pod_start_s 0.76 (measured)
    0.5 vCPU, target 2      2     19.2 / 21   (-9%)         417 / 367   (+14%)   pod_start_s 0.90 (measured)

Seed 1's miss pointed at zero reached sooner than simulated (two cold starts after 6.4 s quiet spells
that no tick phase predicted): Knative's windows average the one-second buckets in (now - window, now],
now truncated to the second (bucketing.go WindowAverage), not [now - window, now). With that simulated,
the same measurements are predicted as (cold starts, replica-seconds):

    seed 2 (first run above)   21.5 / 20  (+7%)    385 / 396  (-3%)
    seed 3 (second, third)     19.8 / 20  (-1%)    377 / 349  (+8%);   20.2 / 20 (+1%)   371 / 371 (0%)
    seed 4 (old probe)         19.8 / 17  (+16%)   330 / 375  (-12%)
    seed 4 (probe every 1 s)   19.8 / 19  (+4%)    330 / 326  (+1%)
    seed 5                     23.8 / 23  (+3%)    342 / 368  (-7%)
    seed 1                     22.2 / 24  (-7%)    298 / 290  (+3%)
    seed 2                     21.2 / 21  (+1%)    389 / 367  (+6%)

Seed 5's p50, 13 ms predicted against 813 ms measured, sits on a knife edge: 49% of its requests waited
over a second (bursts that came while draining replicas held the node's room), and the simulation has 42%
to 47% of them do so over its tick phases, so the median falls on the warm side there.

(replica-seconds count scheduled replicas; for the first, third, fourth and fifth runs, recorded before
the bench counted them so, they are recomputed from pods.json, as are all their predictions with today's
simulator.) A 1-vCPU replica has the node to itself: a start soon after scale to zero waits Pending for
the last replica's 32 s drain, and whether a request comes just before or just after the service reaches
zero turns on seconds, so those counts swing between runs, as they do between the autoscaler's tick
phases in the simulation (13 to 19 cold starts over the four phases of the third run). Before the node's
room and the drain were modelled, the first such run predicted 305 replica-seconds against 2,354 counted
with Pending pods, and cold answers of 1.5 s against 15.5 s measured.
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
from zeroserve.advise.validate_knative import validate_knative

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "tests" / "data" / "advise-knative"
MODEL_NAME = "efficientnet"
NAMESPACE = "advise"


def advise_file(
    model: Path,
    duration: float,
    seed: int,
    node_free_vcpu: float | None = None,
    vcpu: float = 1.0,
    target: float = 1.0,
) -> dict[str, Any]:
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
                "vcpu": [vcpu],
                "min_scale": [0],
                "target": [target],
                "max_batch_size": [1],
                "scale_to_zero_retention_s": [0],
                "node": "aws-c7i.xlarge",
                # The one test node, with what its system pods leave (measured once the cluster is up).
                **({"max_nodes": 1, "node_free_vcpu": round(node_free_vcpu, 3)} if node_free_vcpu else {}),
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
    parser.add_argument("--duration", type=float, default=600, help="seconds of MMPP load (default 600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vcpu", type=float, default=0.5, help="the replicas' CPU (default 0.5)")
    parser.add_argument("--target", type=float, default=2.0, help="the concurrency target (default 2)")
    parser.add_argument("--out", type=Path, default=Path("zeroserve-advise-knative"))
    parser.add_argument(
        "--keep",
        metavar="NAME",
        help="also keep the run's record as tests/data/advise-knative/NAME.json, which the test suite "
        "predicts again with every change to the simulator (tests/test_advise_recorded.py)",
    )
    parser.add_argument(
        "--predict-only", action="store_true", help="profile and simulate; do not start the cluster"
    )
    parser.add_argument(
        "--node-free-vcpu",
        type=float,
        help="with --predict-only: the node's CPU left for replicas (the cluster run measures it)",
    )
    args = parser.parse_args()

    from modelhost import SHARED_MODELS, serve_models

    console = Console()
    if not console.is_terminal:
        console.width = 150
    model = SHARED_MODELS / "efficientnet-lite0.onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "advise.yaml"

    def advise(node_free_vcpu: float | None) -> tuple[Any, Any, Any]:
        path.write_text(
            yaml.safe_dump(
                advise_file(model, args.duration, args.seed, node_free_vcpu, args.vcpu, args.target),
                sort_keys=False,
            )
        )
        loaded = config.load(path)
        profile, advice, _ = advise_loaded(loaded, args.out, console, top=1)
        return loaded, profile, advice

    # Profiled before the cluster starts, on a quiet machine; simulated again (the profile is cached by
    # the model's sha256) once the node's room is known.
    loaded, profile, advice = advise(args.node_free_vcpu if args.predict_only else None)
    if args.predict_only:
        from zeroserve.advise.validate_knative import predict_knative

        pred = predict_knative(loaded, profile, advice, args.duration)
        print(json.dumps(pred, indent=1))
        return 0

    import knative
    from controlplane import Binaries, ControlPlane, default_cache_dir
    from node import Images
    from pods import PodTimeline, free_cpu, ready_object, service_address, wait_for
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
            free = free_cpu(plane, NAMESPACE)
            print(f"  the node has {free:.2f} CPU left for replicas; simulating with that room", flush=True)
            loaded, profile, advice = advise(free)
            with serve_models(SHARED_MODELS) as base:
                # The ModelService exactly as advise wrote it, but for where the model comes from.
                ms["metadata"]["namespace"] = NAMESPACE
                ms["spec"]["model"]["uri"] = f"{base}/{model.name}"
                (args.out / "modelservice-applied.yaml").write_text(yaml.safe_dump(ms, sort_keys=False))
                knative.apply(plane, [ms])
                wait_for(
                    lambda: ready_object(plane, "modelservice", name, NAMESPACE),
                    within=300,
                    what="the ModelService",
                )
                host = f"{name}.{NAMESPACE}.{knative.DOMAIN}"
                selector = f"serving.knative.dev/service={name}"
                ingress = service_address(plane, knative.TRAEFIK_NAMESPACE, "traefik")
                # validate_knative starts from zero, as the simulation does with min-scale 0: it waits for the
                # pods to be gone around its measured start.
                print(f"  benching {name}: {args.duration:g} s of MMPP through {ingress}", flush=True)
                started = time.monotonic()
                timeline = PodTimeline(plane.kubeconfig, NAMESPACE, selector)
                with timeline:
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
                (args.out / "pods.json").write_text(json.dumps(timeline.pods, indent=1))
                print("  pods:", json.dumps(timeline.summary()), flush=True)
                print(f"  bench took {time.monotonic() - started:.0f} s", flush=True)
    if args.keep:
        kept = RECORDS / f"{args.keep}.json"
        record = json.loads((args.out / "validate" / "record.json").read_text())
        record["recorded"] = {
            "on": time.strftime("%Y-%m-%d"),
            "by": f"bench/advise_knative.py --seed {args.seed} --vcpu {args.vcpu:g} --target {args.target:g} "
            f"--duration {args.duration:g}",
        }
        kept.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        print(f"  kept the record as {kept.relative_to(ROOT)}", flush=True)
    print(json.dumps({"misses": compared.misses()}, indent=1))
    return 0 if not compared.misses() else 1


if __name__ == "__main__":
    sys.exit(main())
