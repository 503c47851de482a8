"""The operator's Prometheus metrics (prefix zeroserve_operator_), served on their own port.

The per-ModelService series carry `namespace` and `model` (the ModelService's name), the labels the
runtime's series get, so the dashboard and the alert rules can join them; scrape the operator with
honor_labels, as the chart's ServiceMonitor does, or Prometheus renames its `namespace` to
`exported_namespace`. They number one per ModelService and are dropped with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from zeroserve_operator.resources.status import readiness

# Seconds, e.g. "0.25": the p99 above which the chart's ZeroserveLatencyAboveTarget alert fires.
LATENCY_TARGET_ANNOTATION = "zeroserve.dev/latency-p99-target-seconds"

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
MODELSERVICE_READY = Gauge(
    "zeroserve_operator_modelservice_ready",
    "1 while the ModelService's Ready condition is True, else 0.",
    ["namespace", "model"],
)
LATENCY_TARGET = Gauge(
    "zeroserve_operator_modelservice_latency_target_seconds",
    f"The p99 latency the ModelService asks for in its {LATENCY_TARGET_ANNOTATION} annotation; the "
    "alert rules use the chart's default where there is none.",
    ["namespace", "model"],
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


def latency_target(body: Mapping[str, Any]) -> float | None:
    """The annotation's seconds, or None when it is missing or not a positive number."""
    raw = (body["metadata"].get("annotations") or {}).get(LATENCY_TARGET_ANNOTATION)
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < float("inf") else None


def observe_readiness(body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    key = _key(body)
    _readiness[key] = state = readiness(status)
    _publish()
    MODELSERVICE_READY.labels(*key).set(1 if state == "true" else 0)
    target = latency_target(body)
    if target is None:
        with contextlib.suppress(KeyError):
            LATENCY_TARGET.remove(*key)
    else:
        LATENCY_TARGET.labels(*key).set(target)


def forget(body: Mapping[str, Any]) -> None:
    key = _key(body)
    _readiness.pop(key, None)
    _publish()
    for gauge in (MODELSERVICE_READY, LATENCY_TARGET):
        with contextlib.suppress(KeyError):
            gauge.remove(*key)


def serve(port: int, addr: str) -> None:
    """Serve /metrics on `port` (0 turns it off)."""
    if port:
        start_http_server(port, addr=addr)
