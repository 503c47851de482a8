"""`zeroserve quickstart`: the whole product on this machine, no cluster and no cloud account.

It trains a real digits classifier, serves it three ways (the Zeroserve runtime, the Google Cloud Function
and the AWS Lambda handler, each as a local process), runs a short bursty comparison against the three
with `zeroserve bench` (first, so each target's first request is its cold start), checks they all answer
what scikit-learn answers, prints the ModelService that would deploy the same model to a cluster, and
ends with `zeroserve advise` on the same model and load: the cheapest configuration per platform.
Every process it starts is stopped on the way out, Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroserve.children import dies_with_parent

MODEL_NAME = "digits"
INPUT = "pixels"
STEPS = 7


class QuickstartError(RuntimeError):
    pass


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="train a demo model, serve it as Zeroserve, GCF and Lambda locally, and compare them",
        description=__doc__,
    )
    p.add_argument("--out", type=Path, default=Path("zeroserve-quickstart"), help="where the report goes")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of bursty load (default 30)")
    p.add_argument("--seed", type=int, default=7, help="seed of the MMPP arrivals")
    p.set_defaults(func=_quickstart)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoModel:
    path: Path
    sha256: str
    test_x: Any
    test_y: Any
    sklearn_pred: Any


def train_demo_model(directory: Path) -> DemoModel:
    """Logistic regression on scikit-learn's bundled 8x8 digits, exported to ONNX with skl2onnx."""
    try:
        import numpy as np
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise QuickstartError(
            f"the quickstart needs {e.name}: pip install 'zeroserve[quickstart]' (make quickstart does)"
        ) from None
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    clf = LogisticRegression(max_iter=2000).fit(train_x, train_y)
    onx = to_onnx(
        clf,
        initial_types=[(INPUT, _float_tensor_type())],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    path = directory / f"{MODEL_NAME}.onnx"
    path.write_bytes(onx.SerializeToString())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return DemoModel(path, sha, test_x, test_y, clf.predict(test_x))


def _float_tensor_type() -> Any:
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, 64])


def infer_request(x: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


class Processes:
    """Children started by the quickstart; all stopped on exit, whatever the exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # A killed quickstart leaves nothing running; Ctrl-C and errors are handled by stop().
                preexec_fn=dies_with_parent(signal.SIGTERM),
            )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalTarget:
    name: str
    kind: str
    url: str  # the local process serving it is named like the target


def start_targets(procs: Processes, model: DemoModel, cache: Path) -> list[LocalTarget]:
    import importlib.util

    # Found, not imported: the function module loads its model on import, as a cold start does.
    gcf_source = importlib.util.find_spec("zeroserve_runtime.functions.gcf").origin  # type: ignore[union-attr]
    env = {
        "ZEROSERVE_MODEL_URI": str(model.path),
        "ZEROSERVE_MODEL_NAME": MODEL_NAME,
        "ZEROSERVE_MODEL_SHA256": model.sha256,
        "ZEROSERVE_CACHE_DIR": str(cache),
        # One core each, as a 1-vCPU function or a 1-CPU pod would get; the three share this machine.
        "ZEROSERVE_THREADS": "1",
    }
    ports = [_free_port() for _ in range(3)]
    exe = sys.executable
    procs.start(
        "zeroserve",
        [
            exe,
            "-m",
            "zeroserve.cli",
            "serve",
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            "0",
            "--host",
            "127.0.0.1",
        ],
        env,
    )
    procs.start(
        "gcf",
        [
            exe,
            "-m",
            "functions_framework",
            "--target",
            "infer",
            "--source",
            str(gcf_source),
            "--port",
            str(ports[1]),
        ],
        {**env, "HOST": "127.0.0.1"},
    )
    procs.start(
        "lambda",
        [
            exe,
            "-m",
            "zeroserve_runtime.functions.url_emulator",
            "--port",
            str(ports[2]),
            "--backend",
            "direct",
        ],
        env,
    )
    return [
        LocalTarget("zeroserve", "oip-rest", f"http://127.0.0.1:{ports[0]}"),
        LocalTarget("gcf", "gcf", f"http://127.0.0.1:{ports[1]}"),
        LocalTarget("lambda", "lambda-url", f"http://127.0.0.1:{ports[2]}"),
    ]


def wait_ready(procs: Processes, targets: list[LocalTarget], timeout_s: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    pending = {t.name: t for t in targets}
    deadline = time.monotonic() + timeout_s
    by_name = dict(procs.procs)
    while pending:
        for name, t in list(pending.items()):
            proc = by_name[t.name]
            if proc.poll() is not None:
                tail = procs.log_tail(t.name)
                raise QuickstartError(f"{name} exited with status {proc.returncode} while starting:\n{tail}")
            try:
                with urllib.request.urlopen(f"{t.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        del pending[name]
            except (urllib.error.URLError, OSError):
                pass
        if time.monotonic() > deadline:
            names = ", ".join(pending)
            raise QuickstartError(f"{names} not ready after {timeout_s:.0f} s; logs in {procs.logs}")
        time.sleep(0.1)


def check_predictions(targets: list[LocalTarget], model: DemoModel) -> dict[str, float]:
    """Every target classifies the held-out digits; each must agree with scikit-learn on every one."""
    import urllib.request

    import numpy as np
    import orjson

    body = orjson.dumps(infer_request(model.test_x))
    accuracy = {}
    for t in targets:
        req = urllib.request.Request(
            f"{t.url}/v2/models/{MODEL_NAME}/infer", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            outputs = {o["name"]: o for o in orjson.loads(r.read())["outputs"]}
        labels = np.asarray(outputs["label"]["data"])
        disagree = int((labels != model.sklearn_pred).sum())
        if disagree:
            raise QuickstartError(
                f"{t.name} disagrees with scikit-learn on {disagree} of {len(labels)} digits"
            )
        accuracy[t.name] = float((labels == model.test_y).mean())
    return accuracy


def modelservice_yaml(model: DemoModel) -> str:
    import yaml
    from zeroserve_operator.api import ModelServiceSpec

    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": f"s3://YOUR-BUCKET/models/{MODEL_NAME}.onnx", "sha256": model.sha256},
            "runtime": {"name": "onnx", "threads": 1},
            "resources": {"cpu": "1", "memory": "512Mi"},
            "scaling": {"maxReplicas": 5},
        }
    )
    doc = {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": MODEL_NAME},
        "spec": spec.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True, mode="json"),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def bench_targets(targets: list[LocalTarget]) -> list[Any]:
    from zeroserve_loadgen.targets import Target

    return [Target(name=t.name, kind=t.kind, url=t.url, model=MODEL_NAME) for t in targets]  # type: ignore[arg-type]


def bench_file(targets: list[Any], payload: dict[str, Any], workload: Any) -> str:
    import yaml

    doc = {
        "targets": [t.model_dump(mode="json", exclude_defaults=True) for t in targets],
        "payload": payload,
        "workload": workload.model_dump(mode="json"),
    }
    return yaml.safe_dump(doc, sort_keys=False)


@contextlib.contextmanager
def _step(console: Any, n: int, text: str) -> Iterator[None]:
    from rich.markup import escape

    started = time.monotonic()
    console.print(f"[bold]\\[{n}/{STEPS}][/] {escape(text)}", highlight=False)
    yield
    console.print(f"      done in {time.monotonic() - started:.1f} s", style="dim", highlight=False)


def run(out: Path, duration: float, seed: int, console: Any) -> int:
    import urllib.error

    from rich.markup import escape
    from zeroserve_loadgen import render
    from zeroserve_loadgen.bench import BenchOptions, run_bench
    from zeroserve_loadgen.runner import LoadgenError
    from zeroserve_loadgen.targets import BenchFileError
    from zeroserve_loadgen.workloads import MMPP

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    procs = Processes(work)
    try:
        with _step(console, 1, "training a digits classifier (scikit-learn) and exporting it to ONNX"):
            model = train_demo_model(work)
            console.print(f"      {model.path} sha256 {model.sha256[:12]}…", highlight=False, markup=False)
        with _step(console, 2, "starting the Zeroserve runtime, the Cloud Function and the Lambda handler"):
            targets = start_targets(procs, model, work / "cache")
            wait_ready(procs, targets)
            for t in targets:
                console.print(f"      {t.name:<10} {t.kind:<11} {t.url}", highlight=False, markup=False)
        workload = MMPP(rates=(4.0, 40.0), mean_sojourn_s=(4.0, 2.0), duration_s=duration, seed=seed)
        payload = infer_request(model.test_x[:1])
        bench = bench_targets(targets)
        (out / "bench.yaml").write_text(bench_file(bench, payload, workload))
        with _step(
            console,
            3,
            f"bursty load (MMPP {workload.rates[0]:g}/{workload.rates[1]:g} req/s, mean "
            f"{workload.theoretical_mean_rate():.1f} req/s) on all three for {duration:g} s",
        ):
            result = run_bench(bench, payload, workload, BenchOptions(out_dir=out), console)
        with _step(console, 4, f"classifying {len(model.test_y)} held-out digits through each target"):
            accuracy = check_predictions(targets, model)
            for name, acc in accuracy.items():
                console.print(
                    f"      {name:<10} accuracy {acc:.1%}, identical to scikit-learn", highlight=False
                )
        with _step(console, 5, "report"):
            render.print_table(result.report, console)
            for line in (
                f"      HTML report: {result.paths['html']}",
                f"      JSON {result.paths['json']}, CSV {result.paths['csv']}",
                f"      re-run it: zeroserve bench {out / 'bench.yaml'}",
            ):
                console.print(line, highlight=False, markup=False)
        with _step(console, 6, "the ModelService that deploys this model to a cluster (kubectl apply -f)"):
            text = modelservice_yaml(model)
            (out / "modelservice.yaml").write_text(text)
            console.print(text, highlight=False, markup=False)
            console.print(f"      saved as {out / 'modelservice.yaml'}", highlight=False, markup=False)
        with _step(console, 7, "zeroserve advise: the cheapest configuration for an hour of this load"):
            advise_step(out, model, payload, workload, console)
    except (QuickstartError, LoadgenError, BenchFileError, urllib.error.URLError, OSError) as e:
        # Messages name extras and paths, 'zeroserve[quickstart]', which rich would take for markup.
        console.print(
            f"[red]quickstart failed:[/] {escape(str(e))}; logs in {escape(str(work))}", highlight=False
        )
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping what the quickstart started[/]")
        return 130
    finally:
        procs.stop()
    console.print(f"quickstart finished in {time.monotonic() - started:.0f} s", highlight=False)
    return 0 if result.ok else 1


def advise_file(
    model: DemoModel, payload: dict[str, Any], workload: Any, limited: bool, folder: Path
) -> dict[str, Any]:
    """A small advise file, to be saved in `folder`: the demo model, the quickstart's bursty load
    stretched to an hour, a few knobs per platform, profiled at one vCPU only, so the step takes seconds."""
    # Relative to the file, as advise reads it: the printed re-run command works from any directory.
    path = os.path.relpath(model.path.resolve(), folder.resolve())
    return {
        "model": {"path": path, "name": MODEL_NAME, "sha256": model.sha256},
        "payload": payload,
        "workload": {**workload.model_dump(mode="json"), "duration_s": 3600},
        "objectives": {"p99_ms": 50, "min_success_ratio": 0.999},
        "profile": {"vcpus": [1.0], "requests": 20, "cpu_limits": "cgroup" if limited else "none"},
        "platforms": {
            "knative": {"vcpu": [1.0], "min_scale": [0, 1], "target": [1, 4]},
            "lambda": {"memory_mb": [1024, 1769], "provisioned_concurrency": [0, 1]},
            "cloud_run": {"vcpu": [1.0], "concurrency": [1, 8], "min_instances": [0, 1]},
            "always_on": {"presets": ["aws-c7i.xlarge"], "replicas": [1]},
        },
    }


def advise_step(out: Path, model: DemoModel, payload: dict[str, Any], workload: Any, console: Any) -> None:
    import yaml

    from zeroserve.advise import config
    from zeroserve.advise.cli import advise_loaded
    from zeroserve.advise.profile import ProfileError, cgroup_available

    limited = cgroup_available()
    if not limited:
        console.print(
            "      no writable cgroup CPU controller here (root and cgroups needed): profiling without CPU "
            "limits",
            highlight=False,
            markup=False,
        )
    doc = advise_file(model, payload, workload, limited, out)
    (out / "advise.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        loaded = config.resolve(config.parse(doc, "advise.yaml"), out)
        advise_loaded(loaded, out / "advise", console, top=3)
    except (config.AdviseFileError, ProfileError) as e:
        raise QuickstartError(f"advise: {e}") from None
    console.print(f"      re-run it: zeroserve advise {out / 'advise.yaml'}", highlight=False, markup=False)


def _quickstart(args: Any) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 150
    return run(args.out, args.duration, args.seed, console)
