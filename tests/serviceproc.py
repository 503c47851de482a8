"""A long-running process under test (the operator, the runtime): its own session, a log file, ready
when an HTTP URL answers 200, stopped with SIGTERM and, failing that, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections import deque
from pathlib import Path

from controlplane import _die_with_parent


class ServiceProcess:
    what = "service"

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 60, wait_ready: bool = True) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.what} not ready at {self.ready_url} within {timeout}s:\n{self.tail()}")

    def get(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no cleanup and no last words, as when a node dies."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, grace: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "".join(deque(self.log().splitlines(keepends=True), maxlen=lines))

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OipProcess(ServiceProcess):
    """An OIP v2 REST server on a loopback port (the runtime, a function's local server): ready once it
    answers /v2/health/ready."""

    def __init__(self, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        super().__init__(argv, log_path, env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/v2/health/ready"
