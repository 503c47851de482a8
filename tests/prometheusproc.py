"""A real Prometheus (built by hack/build-control-plane.sh at the pin in hack/versions.env) on a loopback
port, and promtool beside it. Missing or stale binaries fail the test, naming what to run."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from controlplane import default_cache_dir, free_port, read_versions
from serviceproc import ServiceProcess


def release() -> str:
    """Prometheus's release for the pinned module version: v0.316.0 is 3.16.0."""
    minor, patch = read_versions()["PROMETHEUS_VERSION"].removeprefix("v0.").split(".")
    return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"


def binary(name: str) -> Path:
    path = default_cache_dir() / "bin" / name
    hint = "run hack/build-control-plane.sh, which builds prometheus and promtool at PROMETHEUS_VERSION"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {hint}")
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    if f"version {release()}" not in out.stdout + out.stderr:
        raise RuntimeError(f"{path} is not release {release()}: {out.stdout}{out.stderr}; {hint}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("promtool")), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


class Prometheus(ServiceProcess):
    what = "prometheus"

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], interval: str = "1s") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": scrape_configs,
                }
            )
        )
        checked = promtool("check", "config", str(self.config))
        if checked.returncode != 0:
            raise AssertionError(f"promtool check config:\n{checked.stdout}{checked.stderr}")
        argv = [
            str(binary("prometheus")),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        super().__init__(argv, workdir / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/-/ready"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read().decode()}") from e
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to (now, or at `at`)."""
        data = self.api("query", query=expr, time=str(at if at is not None else time.time()))
        assert data["resultType"] == "vector", data
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value `expr` evaluates to, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> list[dict[str, Any]]:
        return [t for t in self.api("targets")["activeTargets"] if t["health"] == "up"]


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]
