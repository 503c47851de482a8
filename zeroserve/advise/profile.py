"""The model measured where it will run: the real runtime (`zeroserve serve`) and the real function
handler, each in its own process under a cgroup CPU quota, as a container or a Lambda environment of
that size gets.

Per vCPU point:
- the runtime: its cold-start phases (from its own /metrics: import, fetch, load, warm-up, total from
  the kernel's process start), then sequential requests per batch size over loopback HTTP, timed by the
  client: what one replica's service time looks like from outside;
- the function handler (`zeroserve_runtime.functions.core`, what Lambda and Cloud Functions run): its
  init, process start to ready, and its in-process service time per request, which is what Lambda
  bills.

A profile is cached by the model's sha256 and what was asked of it, with how much CPU other processes
took while each point was timed: a profile taken on a busy machine is slower, with a heavier tail, and it
says so whenever it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from zeroserve.children import dies_with_parent

PROFILE_VERSION = 1
PERIOD_US = 100_000
# CPUs that other processes may take while a point is timed before the profile calls itself busy: a
# quarter of a core stretched the digits model's paced tail from 1.7 ms to 6 ms (13% of samples 3-7x the
# median), which a cached profile then predicts for every later run.
BUSY_CPUS = 0.25
_ORT_TYPES = {
    "tensor(float)": ("FP32", 0.0),
    "tensor(double)": ("FP64", 0.0),
    "tensor(int64)": ("INT64", 1),
    "tensor(int32)": ("INT32", 1),
    "tensor(float16)": ("FP16", 0.0),
    "tensor(bool)": ("BOOL", True),
    "tensor(uint8)": ("UINT8", 0),
}


class ProfileError(RuntimeError):
    """Profiling could not run; the message says what is missing."""


def auto_payload(model_path: Path, dynamic_dim: int = 128) -> dict[str, Any]:
    """One request of the model's input shapes at batch 1, every other unknown dimension `dynamic_dim`:
    the payload's values do not change a dense model's speed."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inputs = []
    for i in session.get_inputs():
        if i.type not in _ORT_TYPES:
            raise ProfileError(f"payload auto: input {i.name} is {i.type}; give a payload file instead")
        datatype, value = _ORT_TYPES[i.type]
        shape = [
            d if isinstance(d, int) and d > 0 else (1 if k == 0 else dynamic_dim)
            for k, d in enumerate(i.shape)
        ]
        inputs.append(
            {"name": i.name, "datatype": datatype, "shape": shape, "data": [value] * math.prod(shape)}
        )
    return {"inputs": inputs}


def batched(payload: dict[str, Any], batch: int) -> dict[str, Any]:
    """The payload's tensors repeated `batch` times along their first dimension."""
    if batch == 1:
        return payload
    inputs = []
    for t in payload["inputs"]:
        flat = np.asarray(t["data"]).ravel().tolist()
        inputs.append({**t, "shape": [t["shape"][0] * batch, *t["shape"][1:]], "data": flat * batch})
    return {**payload, "inputs": inputs}


# -- CPU quota --------------------------------------------------------------------------------------------


class CpuQuota:
    """A cgroup of our own with a CPU quota of `vcpu` CPUs (cfs quota / period), v1 or v2; the process
    started through `wrap()` joins it before exec, so everything it runs is limited from its first
    instruction."""

    def __init__(self, vcpu: float, tag: str) -> None:
        self.vcpu = vcpu
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        name = f"zeroserve-advise-{os.getpid()}-{tag}"
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path, self.v2 = v1 / name, False
        elif (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.subtree_control").read_text():
            self.path, self.v2 = v2 / name, True
        else:
            raise ProfileError(
                "profiling under CPU limits needs a cgroup CPU controller at /sys/fs/cgroup (v1 cpu or v2 "
                "with cpu in cgroup.subtree_control); set profile.cpu_limits: none to profile without them"
            )

    def __enter__(self) -> CpuQuota:
        quota = max(1000, int(self.vcpu * PERIOD_US))
        try:
            self.path.mkdir(exist_ok=True)
            if self.v2:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except PermissionError:
            raise ProfileError(
                f"cannot create the cgroup {self.path}: profiling under CPU limits needs root; set "
                "profile.cpu_limits: none to profile without them"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        # Only what we started joined this cgroup; a straggler (a server's forked worker) goes with it.
        with contextlib.suppress(OSError, ValueError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        # The kernel lets go of an emptied cgroup a moment after its last process exits.
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *argv]


def cgroup_available() -> bool:
    """Whether this process can make cgroups with a CPU quota (root, a cpu controller)."""
    try:
        with CpuQuota(1.0, "probe"):
            return True
    except ProfileError:
        return False


@contextlib.contextmanager
def cpu_limit(vcpu: float, tag: str, enabled: bool) -> Iterator[Callable[[list[str]], list[str]]]:
    if not enabled:
        yield lambda argv: argv
        return
    with CpuQuota(vcpu, tag) as q:
        yield q.wrap


# -- the profile ------------------------------------------------------------------------------------------


@dataclass
class Point:
    vcpu: float
    threads: int
    # Seconds per request by batch size: the runtime over HTTP, and the handler in process.
    runtime_s: dict[int, list[float]] = field(default_factory=dict)
    handler_s: dict[int, list[float]] = field(default_factory=dict)
    runtime_cold: dict[str, float] = field(default_factory=dict)  # phase -> seconds, from /metrics
    # Parallel inferences n -> seconds per request with n clients back to back at once (batch 1), and with
    # one client back to back, on the runtime started with n parallel inferences and its default share of
    # the threads: their ratio is how much n at once slow each other.
    parallel_s: dict[int, list[float]] = field(default_factory=dict)
    parallel_alone_s: dict[int, list[float]] = field(default_factory=dict)
    handler_init_s: float = 0.0
    handler_cold: dict[str, float] = field(default_factory=dict)  # phase -> seconds, as runtime_cold
    limited: bool = True  # under a cgroup quota; False: unconstrained, scaled
    others_cpus: float = 0.0  # CPUs other processes used, on average, while this point was timed


@dataclass
class Profile:
    model_sha256: str
    model_name: str
    points: list[Point]
    key: str = ""
    seconds: float = 0.0
    cached: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Profile:
        raw = orjson.loads(data)
        points = []
        for p in raw.pop("points"):
            for k in ("runtime_s", "handler_s", "parallel_s", "parallel_alone_s"):
                p[k] = {int(b): v for b, v in p.get(k, {}).items()}
            points.append(Point(**p))
        return cls(points=points, **raw)

    # -- service times for any vCPU, from the measured points --------------------------------------

    def busy_warning(self) -> str | None:
        """What the point whose timing other processes took the most CPUs from says, when over BUSY_CPUS."""
        worst = max(self.points, key=lambda p: p.others_cpus, default=None)
        if worst is None or worst.others_cpus <= BUSY_CPUS:
            return None
        return (
            f"other processes used {worst.others_cpus:.2f} CPUs while the profile timed {worst.vcpu:g} vCPU: "
            "its service times may be slow and their tail heavy. Profile on a quieter machine (delete "
            f"{self.model_sha256}-{self.key}.json from profile.cache_dir to measure again)"
        )

    def best(self) -> list[Point]:
        """Per vCPU, the point with the fastest runtime at batch 1 (its threads are the recommendation)."""
        out: dict[float, Point] = {}
        for p in self.points:
            if p.vcpu not in out or np.median(p.runtime_s[1]) < np.median(out[p.vcpu].runtime_s[1]):
                out[p.vcpu] = p
        return [out[v] for v in sorted(out)]

    def threads(self, vcpu: float) -> int:
        return min(self.best(), key=lambda p: abs(math.log(p.vcpu / vcpu))).threads

    def _scaled(self, vcpu: float, pick: Callable[[Point], list[float]]) -> np.ndarray:
        """Samples at `vcpu`: the nearest measured point's, scaled by the median interpolated in log-log
        between the points around it. Below the lowest point, time scales as 1/vCPU (a CPU-bound run
        gets its quota's share); above the highest, the highest point's (this machine has no more
        cores to measure with: a conservative guess)."""
        pts = [p for p in self.best() if pick(p)]
        if not pts:
            raise ProfileError("the profile has no samples for this")
        xs = np.log([p.vcpu for p in pts])
        meds = np.log([float(np.median(pick(p))) for p in pts])
        nearest = min(pts, key=lambda p: abs(math.log(p.vcpu) - math.log(vcpu)))
        base = np.asarray(pick(nearest), dtype=float)
        if vcpu <= pts[0].vcpu:
            target = math.exp(meds[0]) * pts[0].vcpu / vcpu
        elif vcpu >= pts[-1].vcpu:
            target = math.exp(meds[-1])
        else:
            target = math.exp(float(np.interp(math.log(vcpu), xs, meds)))
        return base * (target / float(np.median(base)))

    def runtime_service(self, vcpu: float, batch: int = 1) -> np.ndarray:
        return self._scaled(vcpu, lambda p: p.runtime_s.get(batch, []))

    def handler_service(self, vcpu: float, batch: int = 1) -> np.ndarray:
        return self._scaled(vcpu, lambda p: p.handler_s.get(batch, []))

    def parallel_ratio(self, vcpu: float, parallel: int) -> list[float]:
        """How much longer a request takes when it starts while c - 1 others run, c = 0..parallel: 1 alone,
        with all `parallel` running the profiled ratio at the nearest vCPU (n clients at once against one,
        both back to back so that they overlap), linear in between."""
        if parallel <= 1:
            return [1.0, 1.0]
        pts = [p for p in self.points if p.parallel_s.get(parallel) and p.parallel_alone_s.get(parallel)]
        if not pts:
            raise ProfileError(f"the profile has no timing of {parallel} parallel inferences")
        near = min(pts, key=lambda p: abs(math.log(p.vcpu / vcpu)))
        full = float(np.median(near.parallel_s[parallel])) / float(np.median(near.parallel_alone_s[parallel]))
        return [1.0] + [1.0 + (full - 1.0) * (c - 1) / (parallel - 1) for c in range(1, parallel + 1)]

    def batch_sizes(self) -> list[int]:
        return sorted({b for p in self.points for b in p.runtime_s})

    def _interp_scalar(self, vcpu: float, pick: Callable[[Point], float]) -> float:
        pts = self.best()
        values = [pick(p) for p in pts]
        if vcpu <= pts[0].vcpu:
            return values[0] * pts[0].vcpu / vcpu
        return float(np.interp(vcpu, [p.vcpu for p in pts], values))

    def runtime_cold_s(self, vcpu: float) -> float:
        return self._interp_scalar(vcpu, lambda p: p.runtime_cold.get("total", 0.0))

    def handler_init(self, vcpu: float) -> float:
        return self._interp_scalar(vcpu, lambda p: p.handler_init_s)


def profile_key(
    sha: str, payload: dict[str, Any], vcpus: list[float], settings: Any, parallel: tuple[int, ...] = ()
) -> str:
    import onnxruntime

    ask = {
        "v": PROFILE_VERSION,
        "sha": sha,
        "payload": hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        "vcpus": vcpus,
        "batch": settings.batch_sizes,
        "requests": settings.requests,
        "limits": settings.cpu_limits,
        "stall": settings.stall_factor,
        "gap": settings.gap_ms,
        "ort": onnxruntime.__version__,
        **({"parallel": list(parallel)} if parallel else {}),
    }
    return hashlib.sha256(json.dumps(ask, sort_keys=True).encode()).hexdigest()[:16]


class OthersCpu:
    """CPU seconds the whole machine spent busy, less this process's and its reaped children's, over a
    span: what other processes (and a hypervisor's steal) took from the cores the profile measures on."""

    def __enter__(self) -> OthersCpu:
        self._start = self._read()
        self._t0 = time.monotonic()
        self.cpus = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        machine, ours = (b - a for a, b in zip(self._start, self._read(), strict=True))
        self.cpus = max(0.0, machine - ours) / max(time.monotonic() - self._t0, 1e-9)

    @staticmethod
    def _read() -> tuple[float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        busy += getattr(t, "steal", 0)
        me = psutil.Process().cpu_times()
        return busy, me.user + me.system + me.children_user + me.children_system


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(model: Path, name: str, sha: str, threads: int, cache: Path, parallel: int = 1) -> dict[str, str]:
    return {
        "ZEROSERVE_PARALLEL_INFERENCES": str(parallel),
        **os.environ,
        "ZEROSERVE_MODEL_URI": str(model),
        "ZEROSERVE_MODEL_NAME": name,
        "ZEROSERVE_MODEL_SHA256": sha,
        "ZEROSERVE_CACHE_DIR": str(cache),
        "ZEROSERVE_THREADS": str(threads),
        "ZEROSERVE_DRAIN_DELAY_SECONDS": "0",
        "ZEROSERVE_SHUTDOWN_GRACE_SECONDS": "1",
        "ZEROSERVE_LOG_LEVEL": "warning",
    }


def threads_for(vcpu: float) -> int:
    """Intra-op threads for a quota: what the runtime's default makes of its cgroup's quota (its CPUs,
    rounded, at least one; zeroserve_runtime.settings.available_cpus). The profile sets it explicitly all
    the same, so a point means the same on every machine."""
    return max(1, int(vcpu + 0.5))


COLD_METRIC = re.compile(
    r'^zeroserve_cold_start_seconds_sum\{[^}]*phase="(\w+)"[^}]*\}\s+([0-9.eE+-]+)$', re.M
)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    base_url: str,
    log: Path,
    timeout_s: float,
    what: str,
    error: type[Exception],
) -> None:
    """Until `proc` answers ready on the OIP's health route; an exit or the timeout raises `error` with
    the log's end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise error(f"{what} exited with status {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            if _get(f"{base_url}/v2/health/ready")[0] == 200:
                return
        time.sleep(0.05)
    raise error(f"{what} was not ready within {timeout_s:.0f} s; log: {log}")


class Child:
    """A child process with its output in `log`, dying with its parent: the profiled runtime, and the
    targets --validate benches."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=dies_with_parent(signal.SIGTERM),
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Server(Child):
    """`zeroserve serve` in the quota, on loopback."""

    def __init__(self, argv_wrap: Callable[[list[str]], list[str]], env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "zeroserve.cli", "serve", "--http-port", str(self.port)]
        argv += ["--grpc-port", "0", "--host", "127.0.0.1"]
        super().__init__(argv_wrap(argv), env, log)

    def wait_ready(self, timeout_s: float) -> None:
        wait_until_ready(
            self.proc, f"http://127.0.0.1:{self.port}", self.log, timeout_s, "the runtime", ProfileError
        )

    def cold_phases(self) -> dict[str, float]:
        _, body = _get(f"http://127.0.0.1:{self.port}/metrics")
        return {phase: float(v) for phase, v in COLD_METRIC.findall(body.decode())}


def time_http(
    port: int, model: str, body: bytes, n: int, max_s: float, tick: Callable[[], None], gap_s: float = 0.0
) -> list[float]:
    """Sequential requests on one kept-alive connection, each timed from send to the last byte read,
    `gap_s` apart: a server that idles between requests answers slower than one kept busy back to back
    (the digits model: 1.2 ms against 0.26 ms at 1 vCPU), and open-loop traffic leaves it idle."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    path = f"/v2/models/{model}/infer"
    out: list[float] = []
    try:
        for k in range(n + 3):
            t0 = time.perf_counter()
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            data = r.read()
            elapsed = time.perf_counter() - t0
            if r.status != 200:
                raise ProfileError(f"the runtime answered {r.status}: {data[:300].decode(errors='replace')}")
            if k >= 3:  # the first few warm the connection and the arena
                out.append(elapsed)
                tick()
                if sum(out) > max_s and len(out) >= 5:
                    break
            time.sleep(gap_s)
    finally:
        conn.close()
    return out


def _probe_handler(
    argv_wrap: Callable[[list[str]], list[str]],
    env: dict[str, str],
    bodies: dict[int, bytes],
    n: int,
    max_s: float,
    workdir: Path,
    gap_s: float,
) -> tuple[float, dict[str, float], dict[int, list[float]]]:
    spec = {
        "bodies": {b: body.decode() for b, body in bodies.items()},
        "n": n,
        "max_s": max_s,
        "gap_s": gap_s,
    }
    spec_path = workdir / "probe.json"
    spec_path.write_text(json.dumps(spec))
    argv = argv_wrap([sys.executable, "-m", "zeroserve.advise.probe", str(spec_path)])
    proc = subprocess.run(
        argv, env=env, capture_output=True, timeout=600, preexec_fn=dies_with_parent(signal.SIGTERM)
    )
    if proc.returncode != 0:
        raise ProfileError(f"the function handler failed:\n{proc.stderr.decode(errors='replace')[-2000:]}")
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return out["init_s"], out["init_phases"], {int(b): v for b, v in out["service_s"].items()}


def run_profile(
    model_path: Path,
    model_name: str,
    sha: str,
    payload: dict[str, Any],
    vcpus: list[float],
    settings: Any,
    console: Any = None,
    handler: bool = True,
    parallel: list[int] | tuple[int, ...] = (),
) -> Profile:
    """Measure every point, with a progress bar; cached under settings.cache_dir by key. `parallel`: the
    parallel inferences (above 1) to time too, at each vCPU with the runtime's default threads."""
    together = tuple(sorted({p for p in parallel if p > 1}))
    key = profile_key(sha, payload, vcpus, settings, together)
    cache_dir = Path(settings.cache_dir).expanduser()
    cached = cache_dir / f"{sha}-{key}.json"
    if cached.is_file():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            found = Profile.from_json(cached.read_bytes())
            found.cached = True
            return found
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    limited = settings.cpu_limits == "cgroup"
    bodies = {b: orjson.dumps(batched(payload, b)) for b in settings.batch_sizes}
    per_point = len(bodies) * settings.requests * (2 if handler else 1)
    # One thread per whole CPU, and one thread alone where that differs: on a shared or small machine
    # one thread can beat two (they contend), and the profile picks the faster per vCPU.
    pairs = [(v, t) for v in vcpus for t in sorted({1, threads_for(v)})]
    started = time.monotonic()
    points = []
    with (
        tempfile.TemporaryDirectory(prefix="zeroserve-advise-") as tmp,
        Progress(
            TextColumn("profiling {task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=console is None,
        ) as bar,
    ):
        work = Path(tmp)
        per_parallel = settings.requests * len(together)
        task = bar.add_task(model_name, total=per_point * len(pairs) + per_parallel * len(vcpus))
        done = 0
        for i, (vcpu, threads) in enumerate(pairs):
            bar.update(task, description=f"{model_name} at {vcpu:g} vCPU, {threads} thread(s)")
            point = Point(vcpu=vcpu, threads=threads, limited=limited)
            env = _env(model_path, model_name, sha, threads, work / "cache")
            with OthersCpu() as others, cpu_limit(vcpu, f"{i}", limited) as wrap:
                server = _Server(wrap, env, work / f"runtime-{i}.log")
                try:
                    server.wait_ready(timeout_s=300)
                    point.runtime_cold = server.cold_phases()
                    for b, body in bodies.items():
                        point.runtime_s[b] = time_http(
                            server.port,
                            model_name,
                            body,
                            settings.requests,
                            settings.max_point_s,
                            lambda: bar.advance(task),
                            settings.gap_ms / 1000,
                        )
                finally:
                    server.stop()
                if threads == threads_for(vcpu):
                    for n in together:
                        bar.update(task, description=f"{model_name} at {vcpu:g} vCPU, {n} at once")
                        point.parallel_alone_s[n], point.parallel_s[n] = _time_parallel(
                            wrap,
                            _env(model_path, model_name, sha, max(1, threads // n), work / "cache", n),
                            work / f"runtime-{i}-p{n}.log",
                            n,
                            model_name,
                            bodies[1],
                            settings,
                            lambda: bar.advance(task),
                        )
                    done += per_parallel
                if handler:
                    point.handler_init_s, point.handler_cold, point.handler_s = _probe_handler(
                        wrap,
                        env,
                        bodies,
                        settings.requests,
                        settings.max_point_s,
                        work,
                        settings.gap_ms / 1000,
                    )
                    bar.advance(task, sum(len(v) for v in point.handler_s.values()))
            point.others_cpus = others.cpus
            for series in (point.runtime_s, point.handler_s, point.parallel_s, point.parallel_alone_s):
                for b in series:
                    series[b] = drop_stalls(series[b], settings.stall_factor)
            if not limited:
                _scale_unlimited(point)
            bar.update(task, completed=per_point * (i + 1) + done)
            points.append(point)
    profile = Profile(sha, model_name, points, key=key, seconds=time.monotonic() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(profile.to_json())
    return profile


def _time_parallel(
    wrap: Callable[[list[str]], list[str]],
    env: dict[str, str],
    log: Path,
    n: int,
    model: str,
    body: bytes,
    settings: Any,
    tick: Callable[[], None],
) -> tuple[list[float], list[float]]:
    """Seconds per request against the runtime run with `n` parallel inferences: one client back to back,
    then `n` clients back to back at once (without the profile's pacing, so that they do overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    server = _Server(wrap, env, log)
    share = max(5, settings.requests // (n + 1))
    try:
        server.wait_ready(timeout_s=300)
        alone = time_http(server.port, model, body, share, settings.max_point_s / 2, tick)
        with ThreadPoolExecutor(n) as pool:
            runs = [
                pool.submit(time_http, server.port, model, body, share, settings.max_point_s / 2, tick)
                for _ in range(n)
            ]
            return alone, [t for r in runs for t in r.result()]
    finally:
        server.stop()


def drop_stalls(samples: list[float], factor: float) -> list[float]:
    """Samples more than `factor` x the median are the machine stalling (another process took the
    cores), not the model; a CPU quota's throttling stays well within 10x and is kept."""
    if not samples:
        return samples
    limit = float(np.median(samples)) * factor
    return [s for s in samples if s <= limit]


def _scale_unlimited(point: Point) -> None:
    """Without a quota the point ran on every core; below one core, a CPU-bound run takes 1/vCPU as long."""
    factor = max(1.0, 1.0 / point.vcpu)
    for series in (point.runtime_s, point.handler_s):
        for b in series:
            series[b] = [s * factor for s in series[b]]
    point.runtime_cold = {k: v * factor for k, v in point.runtime_cold.items()}
    point.handler_init_s *= factor
    point.handler_cold = {k: v * factor for k, v in point.handler_cold.items()}
