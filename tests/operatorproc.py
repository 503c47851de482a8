"""The operator as a real process (`zeroserve operator`), pointed at a test control plane."""

from __future__ import annotations

import sys
from pathlib import Path

from controlplane import ControlPlane, free_port
from serviceproc import ServiceProcess


class OperatorProcess(ServiceProcess):
    what = "operator"

    def __init__(
        self,
        plane: ControlPlane,
        log_path: Path,
        namespaces: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        scope = [a for ns in namespaces or [] for a in ("--namespace", ns)] or ["--all-namespaces"]
        argv = [
            str(Path(sys.executable).parent / "zeroserve"),
            "operator",
            *scope,
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            f"--metrics-port={self.metrics_port}",
            "--verbose",
        ]
        super().__init__(
            argv,
            log_path,
            {
                "KUBECONFIG": str(plane.kubeconfig),
                "ZEROSERVE_OPERATOR_METRICS_ADDR": "127.0.0.1",
                "ZEROSERVE_OPERATOR_METRICS_PORT": str(self.metrics_port),
                **(env or {}),
            },
        )

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        return self.get(self.ready_url)
