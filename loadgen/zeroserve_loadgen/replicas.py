"""A target's replica count over a run, from the Kubernetes API: the pods matching its selector, watched.

The watch runs in a child process (`python -m zeroserve_loadgen.replicas`), not in the bench process: that
one is patched by gevent and times sends to the millisecond, and decoding pod objects there would make
sends late. The child lists the pods, then watches them and appends a line to a file at every change of
(ready, total), stamped with the wall-clock time it saw the change; closing its stdin asks it for a last
fresh count and to exit. A pod counts as a replica unless it is terminating or finished; a replica is ready
when its Ready condition is True, and scheduled once it has a node: a Pending one that no node has room for
holds no CPU, so replica-seconds count only scheduled ones.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the child process needs none of the bench file's imports
    from zeroserve_loadgen.targets import ReplicaSource

EXTRA = "pip install 'zeroserve[loadgen]'"
WATCH_TIMEOUT_S = 240  # the server ends a watch after this; it is resumed from the last resourceVersion
# A quiet namespace may send nothing until the server ends the watch: only silence beyond that is a dead
# connection.
READ_TIMEOUT_S = WATCH_TIMEOUT_S + 30


class ReplicaError(RuntimeError):
    """The replica count could not be recorded; the message says why."""


# -- counting (pure) --------------------------------------------------------------------------------------


def classify(pod: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(is a replica, is ready, is scheduled) for a pod as the API returns it."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return False, False, False
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return True, ready, bool((pod.get("spec") or {}).get("nodeName"))


def count(pods: dict[str, tuple[bool, bool, bool]]) -> tuple[int, int, int]:
    """(ready, total, scheduled) over classified pods."""
    return (
        sum(r for _, r, _ in pods.values()),
        sum(c for c, _, _ in pods.values()),
        sum(c and n for c, _, n in pods.values()),
    )


@dataclass
class Recorded:
    """What the child saw: (wall-clock time, ready, total, scheduled) at start, at every change and at the
    end."""

    events: list[tuple[float, int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def series(recorded: Recorded, t0: float) -> list[dict[str, float | int]]:
    """Samples in seconds from the start of the run, the time axis of the latency plots: the count at the
    start (t = 0, whatever changed before), every change during the run, and the count at the end."""
    if not recorded.events:
        return []
    before = [e for e in recorded.events if e[0] <= t0]
    first = before[-1] if before else recorded.events[0]
    out: list[dict[str, float | int]] = [
        {"t": 0.0, "ready": first[1], "total": first[2], "scheduled": first[3]}
    ]
    for when, ready, total, scheduled in recorded.events[len(before) :]:
        out.append({"t": round(when - t0, 3), "ready": ready, "total": total, "scheduled": scheduled})
    return out


# -- the child process ------------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    status, reason, body = getattr(e, "status", None), getattr(e, "reason", None), getattr(e, "body", None)
    if isinstance(status, int):  # an ApiException: the API server's own message says most
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(body).get("message", "")
        return f"the API server answered {status} {reason}" + (f": {message}" if message else "")
    pool = getattr(e, "pool", None)
    if pool is not None and getattr(e, "reason", None) is not None:  # urllib3 gave up connecting
        # Without urllib3's "HTTPConnection(host=..., port=...): " (or "<... object at 0x...>: ") in front.
        why = re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", str(e.reason))
        return f"cannot reach the API server at {pool.host}:{pool.port}: {why}"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _api(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client, config

    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context)
    else:
        try:
            config.load_kube_config(context=context)
        except config.ConfigException:
            if context:
                raise
            config.load_incluster_config()
    return client.CoreV1Api()


class _Watcher:
    def __init__(self, api: Any, namespace: str, selector: str, out: Any) -> None:
        self.api, self.namespace, self.selector, self.out = api, namespace, selector, out
        self.pods: dict[str, tuple[bool, bool, bool]] = {}
        self.last: tuple[int, int, int] | None = None
        self.lock = threading.Lock()
        self.done = False
        self.resource_version = ""

    def write(self, line: dict[str, Any], final: bool = False) -> None:
        with self.lock:
            if final or not self.done:
                self.out.write(json.dumps(line) + "\n")
                self.out.flush()

    def emit(self, when: float, always: bool = False, final: bool = False) -> None:
        now = count(self.pods)
        if always or now != self.last:
            self.last = now
            self.write({"t": when, "ready": now[0], "total": now[1], "scheduled": now[2]}, final)

    def relist(self) -> float:
        """Every pod afresh; the time of the answer."""
        resp = self.api.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _preload_content=False, _request_timeout=30
        )
        body = json.loads(resp.data)
        when = time.time()
        self.pods = {p["metadata"]["uid"]: classify(p) for p in body.get("items") or []}
        self.resource_version = body["metadata"].get("resourceVersion", "")
        return when

    def watch_once(self) -> None:
        """One watch request, from the last resourceVersion, until the server ends it."""
        resp = self.api.list_namespaced_pod(
            self.namespace,
            label_selector=self.selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
            _request_timeout=(30, READ_TIMEOUT_S),
        )
        try:
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle(json.loads(line), time.time())
        finally:
            resp.release_conn()

    def handle(self, event: dict[str, Any], when: float) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            # 410 Gone: the resourceVersion is too old to resume from; anything else is as bad.
            raise _Expired(obj.get("message") or json.dumps(obj))
        self.resource_version = (obj.get("metadata") or {}).get("resourceVersion", self.resource_version)
        if kind == "BOOKMARK":
            return
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = classify(obj)
        self.emit(when)

    def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                self.watch_once()
                backoff = 0.5
            except _Expired:
                self.emit(self.relist())
            except Exception as e:
                # A dropped connection: changes in the gap are caught up by the relist, only their times
                # are lost, which the report says.
                self.write({"t": time.time(), "error": f"the watch was interrupted: {_describe(e)}"})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)
                with contextlib.suppress(Exception):
                    self.emit(self.relist())

    def finish(self) -> None:
        """The count at the end, fresh, as the last line: the watch thread writes nothing after it."""
        with self.lock:
            self.done = True
        try:
            when = self.relist()
        except Exception as e:
            self.write({"t": time.time(), "error": f"the last count failed: {_describe(e)}"}, final=True)
        else:
            self.emit(when, always=True, final=True)


class _Expired(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zeroserve_loadgen.replicas", description=__doc__)
    p.add_argument("--namespace", required=True)
    p.add_argument("--selector", required=True)
    p.add_argument("--kubeconfig")
    p.add_argument("--context")
    p.add_argument("--out", type=Path, required=True, help="JSON lines: samples, then errors")
    args = p.parse_args(argv)
    with args.out.open("a") as out:
        try:
            watcher = _Watcher(_api(args.kubeconfig, args.context), args.namespace, args.selector, out)
            watcher.emit(watcher.relist(), always=True)
        except Exception as e:
            out.write(json.dumps({"fatal": _describe(e)}) + "\n")
            return 1
        threading.Thread(target=watcher.run, daemon=True).start()
        sys.stdin.read()  # until the bench closes it (or dies)
        watcher.finish()
    return 0


# -- the bench's side -------------------------------------------------------------------------------------


def check_client() -> None:
    if importlib.util.find_spec("kubernetes") is None:
        raise ReplicaError(f"recording replicas needs the Kubernetes client: {EXTRA}")


class Recorder:
    """One child process recording one target's replicas."""

    def __init__(self, source: ReplicaSource) -> None:
        self.source = source
        self.dir = Path(tempfile.mkdtemp(prefix="zeroserve-replicas-"))
        self.file = self.dir / "replicas.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.recorded: Recorded | None = None

    def start(self) -> None:
        s = self.source
        argv = [sys.executable, "-m", "zeroserve_loadgen.replicas", "--namespace", s.namespace]
        argv += ["--selector", s.selector, "--out", str(self.file)]
        if s.kubeconfig is not None:
            argv += ["--kubeconfig", str(s.kubeconfig)]
        if s.context:
            argv += ["--context", s.context]
        with (self.dir / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)

    def wait_started(self, timeout_s: float = 60.0) -> None:
        """Until the first count is in, so the run starts with it; ReplicaError if there is none."""
        assert self.proc is not None
        deadline = time.time() + timeout_s
        while True:
            lines = self._lines()
            if lines:
                if "fatal" in lines[0]:
                    self.stop()
                    raise ReplicaError(lines[0]["fatal"])
                return
            if self.proc.poll() is not None:
                tail = (self.dir / "stderr").read_text(errors="replace").strip().splitlines()[-3:]
                self.stop()
                raise ReplicaError(f"the watcher exited with status {self.proc.returncode}: {' '.join(tail)}")
            if time.time() > deadline:
                self.stop(timeout_s=1)
                raise ReplicaError(f"no answer from the Kubernetes API within {timeout_s:.0f} s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> Recorded:
        """The last count, then everything recorded. Once only: the files are gone after it."""
        if self.recorded is not None:
            return self.recorded
        self.close(timeout_s)
        recorded = Recorded()
        for line in self._lines():
            if "error" in line or "fatal" in line:
                recorded.errors.append(line.get("error") or line["fatal"])
            else:
                recorded.events.append(
                    (line["t"], line["ready"], line["total"], line.get("scheduled", line["total"]))
                )
        shutil.rmtree(self.dir, ignore_errors=True)
        self.recorded = recorded
        return recorded

    def request_stop(self) -> None:
        """Ask for the last count without waiting for it, so that several recorders end together."""
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.request_stop()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _lines(self) -> list[dict[str, Any]]:
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return []
        # The child may be halfway through a line: only whole ones count.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


if __name__ == "__main__":
    sys.exit(main())
