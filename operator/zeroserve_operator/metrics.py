"""The operator's Prometheus metrics (prefix zeroserve_operator_), served on their own port."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from zeroserve_operator.resources.status import readiness

RECONCILES = Counter(
    "zeroserve_operator_reconciles_total",
    "ModelService reconciles by result (success, invalid, knative_missing, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "zeroserve_operator_reconcile_duration_seconds",
    "Time to reconcile one ModelService, API calls included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODELSERVICES = Gauge(
    "zeroserve_operator_modelservices",
    "ModelServices known to this operator, by readiness (true, false, unknown).",
    ["ready"],
)
for _state in ("true", "false", "unknown"):
    MODELSERVICES.labels(ready=_state).set(0)

_readiness: dict[tuple[str, str], str] = {}


def _key(body: Mapping[str, Any]) -> tuple[str, str]:
    return body["metadata"].get("namespace", ""), body["metadata"]["name"]


def _publish() -> None:
    counts = {"true": 0, "false": 0, "unknown": 0}
    for state in _readiness.values():
        counts[state] += 1
    for state, count in counts.items():
        MODELSERVICES.labels(ready=state).set(count)


def observe_readiness(body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    _readiness[_key(body)] = readiness(status)
    _publish()


def forget(body: Mapping[str, Any]) -> None:
    _readiness.pop(_key(body), None)
    _publish()


def serve(port: int, addr: str) -> None:
    """Serve /metrics on `port` (0 turns it off)."""
    if port:
        start_http_server(port, addr=addr)
