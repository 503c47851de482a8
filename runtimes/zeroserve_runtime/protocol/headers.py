"""Response headers every Zeroserve serving surface (server, Lambda, GCF) sets, so `zeroserve bench`
can tell cold starts and billed time apart the same way whatever the target is."""

from __future__ import annotations

import os
import socket
import threading
import time

# "1" on the first inference a process answers: that request paid for the cold start.
COLD_START = "x-zeroserve-cold-start"
# Seconds from process start to ready, sent together with COLD_START.
INIT_SECONDS = "x-zeroserve-init-seconds"
# Seconds from ready to this request's arrival, sent together with COLD_START. Small when the request
# waited for the start (Knative's activator, Lambda and Cloud Run hold it until ready); large when the
# instance had been started ahead of it (a readiness check, pre-warming, provisioned concurrency).
READY_AGE = "x-zeroserve-ready-age-seconds"
# Standard Server-Timing (W3C): "infer;dur=<ms>", the time the server spent on the request: for the
# functions from handler entry to the response, which is what Lambda and Cloud Run bill; for the server
# from the body read to the response (decoding, queue, inference and, over REST, encoding).
SERVER_TIMING = "server-timing"
# Which replica and which revision answered, where the platform names them (Knative and Cloud Run set
# K_REVISION, and a pod's or instance's HOSTNAME is its name): how a bench tells the replicas of a
# scale-up apart and sees the traffic move from one revision to the next. Absent elsewhere, so a
# process run by hand does not hand its machine's name to clients.
REPLICA = "x-zeroserve-replica"
REVISION = "x-zeroserve-revision"


def identity(env: dict[str, str] | None = None) -> dict[str, str]:
    """The replica and revision headers for this process, from its environment."""
    env = dict(os.environ) if env is None else env
    revision = env.get("K_REVISION")
    if not revision:
        return {}
    return {REVISION: revision, REPLICA: env.get("HOSTNAME") or socket.gethostname()}


def server_timing(infer_seconds: float) -> str:
    return f"infer;dur={infer_seconds * 1000:.3f}"


def parse_server_timing(value: str | None) -> float | None:
    """The `infer` duration in seconds from a Server-Timing header, or None when absent or malformed."""
    if not value:
        return None
    for metric in value.split(","):
        name, _, params = metric.strip().partition(";")
        if name.strip() != "infer":
            continue
        for param in params.split(";"):
            key, _, raw = param.strip().partition("=")
            if key == "dur":
                try:
                    return float(raw) / 1000
                except ValueError:
                    return None
    return None


class ColdStart:
    """Marks the first successful inference a process answers as the one that paid for its cold start,
    with the process's start-to-ready time and how long after ready the request came. Thread-safe:
    functions may serve on threads."""

    def __init__(self) -> None:
        self.init_seconds: float | None = None  # both set by mark_ready
        self._ready_at: float | None = None
        self._pending = True
        self._lock = threading.Lock()
        self.identity = identity()

    def mark_ready(self, init_seconds: float) -> None:
        self.init_seconds = init_seconds
        self._ready_at = time.perf_counter()

    def response_headers(self, server_seconds: float, received_at: float | None = None) -> dict[str, str]:
        """`received_at` is the request's arrival on time.perf_counter()."""
        headers = {SERVER_TIMING: server_timing(server_seconds), **self.identity}
        if self._pending:
            with self._lock:
                first, self._pending = self._pending, False
            if first:
                headers[COLD_START] = "1"
                if self.init_seconds is not None:
                    headers[INIT_SECONDS] = f"{self.init_seconds:.3f}"
                if self._ready_at is not None and received_at is not None:
                    headers[READY_AGE] = f"{max(0.0, received_at - self._ready_at):.3f}"
        return headers
