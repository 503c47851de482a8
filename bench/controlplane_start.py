"""Cold start of the test control plane: fresh certificates, empty etcd, every component started and
ready, Knative's CRDs established. This is what the session fixture pays once per test run.

    .venv/bin/python bench/controlplane_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from controlplane import Binaries, ControlPlane

PHASES = ("etcd", "kube-apiserver", "kube-controller-manager", "knative-crds", "total")
GOAL_SECONDS = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    binaries = Binaries.from_cache()
    samples: dict[str, list[float]] = {p: [] for p in PHASES}
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmp:
            with ControlPlane(binaries, Path(tmp)) as plane:
                pass
        for phase in PHASES:
            samples[phase].append(plane.timings[phase])
        print(
            f"run {run}/{args.runs}: " + "  ".join(f"{p} {plane.timings[p]:.2f}s" for p in PHASES), flush=True
        )

    print(f"\ncontrol plane cold start over {args.runs} runs (Kubernetes {binaries.versions['K8S_VERSION']})")
    print(f"{'phase':<26}{'median':>9}{'min':>9}{'max':>9}")
    for phase in PHASES:
        xs = samples[phase]
        print(f"{phase:<26}{statistics.median(xs):>8.2f}s{min(xs):>8.2f}s{max(xs):>8.2f}s")
    median = statistics.median(samples["total"])
    print(
        f"\ngoal {GOAL_SECONDS:.0f}s: median is {median / GOAL_SECONDS:.0%} of it "
        f"({'met' if median <= GOAL_SECONDS else 'MISSED'})"
    )
    return 0 if median <= GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
