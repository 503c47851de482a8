"""How long `zeroserve advise` takes: profiling each model across its knobs (goal: 3 minutes or less per
model), and simulating 4 platforms x about 50 configurations over a 1-hour MMPP after profiling (goal:
30 s or less).

    python bench/advise_speed.py                       # digits, EfficientNet-Lite0, MiniLM-L6, VGG-16
    python bench/advise_speed.py --models digits efficientnet --sweeps 3

Profiles go to a fresh cache directory, so each is measured, not found. VGG-16 is generated with random
weights (bench/vgg16_onnx.py) into a temporary directory and deleted afterwards. Run as root: the
profile puts each point under a cgroup CPU quota.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "models"
sys.path.insert(0, str(REPO / "bench"))

PLATFORMS = {
    # About 50 configurations each.
    "knative": {"vcpu": [0.5, 1, 2], "min_scale": [0, 1], "target": [1, 2, 4, 8], "max_batch_size": [1, 4]},
    "lambda": {
        "memory_mb": [512, 1024, 1536, 1769, 2048, 3008, 4096, 6144, 8192, 10240],
        "provisioned_concurrency": [0, 1, 2, 4, 8],
    },
    "cloud_run": {"vcpu": [1, 2, 4], "concurrency": [1, 2, 4, 8, 16, 32, 80, 160], "min_instances": [0, 1]},
    "always_on": {
        "presets": [
            "aws-c7i.xlarge",
            "aws-m7i.xlarge",
            "gcp-n2-standard-4",
            "sagemaker-ml.c5.large",
            "sagemaker-ml.c5.xlarge",
            "sagemaker-ml.c5.2xlarge",
            "vertex-n1-standard-4",
            "aws-g4dn.xlarge",
            "sagemaker-ml.g4dn.xlarge",
            "vertex-n1-standard-4-t4",
            "aws-g5.xlarge",
            "gcp-g2-standard-4",
        ],
        "replicas": [1, 2, 3, 4],
    },
}
HOUR_MMPP = {"type": "mmpp", "rates": [2, 40], "mean_sojourn_s": [60, 20], "duration_s": 3600, "seed": 1}


def model_paths(names: list[str], tmp: Path) -> dict[str, Path]:
    out = {}
    for name in names:
        if name == "digits":
            from zeroserve.quickstart import train_demo_model

            out[name] = train_demo_model(tmp).path
        elif name == "vgg16":
            import vgg16_onnx

            started = time.monotonic()
            out[name] = vgg16_onnx.build(tmp / "vgg16.onnx")
            print(f"generated VGG-16 in {time.monotonic() - started:.1f} s", flush=True)
        else:
            out[name] = SHARED / {"efficientnet": "efficientnet-lite0.onnx", "minilm": "minilm-l6.onnx"}[name]
    return out


def spec_for(path: Path, name: str, cache: Path) -> object:
    from zeroserve.advise.config import parse

    return parse(
        {
            "model": {"path": str(path), "name": name},
            "workload": HOUR_MMPP,
            "objectives": {"p99_ms": 500, "min_success_ratio": 0.999},
            "platforms": PLATFORMS,
            "profile": {"cache_dir": str(cache)},  # the defaults a user gets
        }
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "efficientnet", "minilm", "vgg16"])
    p.add_argument("--sweeps", type=int, default=3, help="simulation repeats (median reported)")
    args = p.parse_args()
    import os

    from rich.console import Console

    from zeroserve.advise.config import profile_vcpus, resolve
    from zeroserve.advise.profile import run_profile
    from zeroserve.advise.sweep import sweep

    console = Console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="advise-speed-") as tmp_name:
        tmp = Path(tmp_name)
        paths = model_paths(args.models, tmp)
        for name, path in paths.items():
            spec = spec_for(path, name, tmp / "cache")
            loaded = resolve(spec, tmp)  # type: ignore[arg-type]
            vcpus = profile_vcpus(loaded.spec, len(os.sched_getaffinity(0)))
            started = time.monotonic()
            profile = run_profile(
                loaded.model_path,
                name,
                loaded.model_sha256,
                loaded.payload,
                vcpus,
                loaded.spec.profile,
                console,
            )
            profile_s = time.monotonic() - started
            arrivals = loaded.arrivals()
            times, n = [], 0
            for _ in range(args.sweeps):
                started = time.monotonic()
                cands = sweep(loaded.spec, profile, arrivals, loaded.workload.duration)
                times.append(time.monotonic() - started)
                n = len(cands)
            best = profile.best()
            rows.append(
                (
                    name,
                    path.stat().st_size / 1e6,
                    len(profile.points),
                    profile_s,
                    n,
                    len(arrivals),
                    statistics.median(times),
                    float(np.median(best[0].runtime_s[1])) * 1000,
                    best[0].runtime_cold.get("total", 0.0),
                )
            )
    print()
    print(
        f"{'model':<13}{'MB':>6}{'points':>8}{'profile s':>11}{'goal':>7}{'configs':>9}{'requests':>10}"
        f"{'sim s':>8}{'goal':>7}{'p50 ms@min':>12}{'cold s@min':>12}"
    )
    for name, mb, points, prof, n, reqs, sim, p50, cold in rows:
        print(
            f"{name:<13}{mb:>6.0f}{points:>8}{prof:>11.1f}{prof / 180:>6.0%} {n:>8}{reqs:>10,}{sim:>8.1f}"
            f"{sim / 30:>6.0%} {p50:>11.1f}{cold:>12.2f}"
        )
    print("goal columns: the figure as a share of its budget (profile 180 s per model, simulation 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
