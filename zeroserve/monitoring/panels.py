"""The dashboard's panels and their PromQL, as plain data: one source for the generated dashboard and for
the tests that run every query against a real Prometheus.

Per ModelService, selected by `$namespace` and `$model`: the runtime's series carry both (`namespace` from
the scrape target, `model` from the runtime), the queue-proxy's get `model` from the pod's
zeroserve.dev/modelservice label (the chart's PodMonitor and examples/prometheus-scrape-config.yaml
relabel it), and the operator's carry both as labels of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where a query's series come from. The tests check each source where it runs: the runtime and the
# operator as local processes, Knative's queue-proxy only on the test node.
RUNTIME, OPERATOR, KNATIVE = "runtime", "operator", "knative"

SELECTOR = 'namespace="$namespace", model="$model"'
RATE = "$__rate_interval"
# Cold starts are counted from the series themselves, not with increase(): every runtime process
# exposes one cold start (_count 1) from its first scrape, so increase() over a new pod's series would
# miss it. A process seen in the last hour but not an hour ago started within the hour.
COLD_START_WINDOW = "1h"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    source: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _quantile(q: float, metric: str, source: str, by: str = "le") -> Query:
    return Query(
        f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{SELECTOR}}}[{RATE}])))",
        f"p{round(q * 100)}" + (" {{" + by.split(",")[0] + "}}" if by != "le" else ""),
        source,
    )


def _quantiles(metric: str, source: str) -> tuple[Query, ...]:
    return tuple(_quantile(q, metric, source) for q in (0.5, 0.9, 0.99))


_TOTAL = f'zeroserve_cold_start_seconds_count{{{SELECTOR}, phase="total"}}'

ROWS: tuple[Row, ...] = (
    Row(
        "Requests",
        (
            Panel(
                "Request rate by outcome",
                "Inference requests the runtime answered, per second, by outcome (success, invalid, busy, "
                "error, cancelled...).",
                "reqps",
                (
                    Query(
                        f"sum by (outcome) (rate(zeroserve_requests_total{{{SELECTOR}}}[{RATE}]))",
                        "{{outcome}}",
                        RUNTIME,
                    ),
                ),
            ),
            Panel(
                "Success ratio",
                "Share of inference requests answered with success.",
                "percentunit",
                (
                    Query(
                        f'sum(rate(zeroserve_requests_total{{{SELECTOR}, outcome="success"}}[{RATE}])) / '
                        f"sum(rate(zeroserve_requests_total{{{SELECTOR}}}[{RATE}]))",
                        "success ratio",
                        RUNTIME,
                    ),
                ),
            ),
            Panel(
                "Latency in the runtime",
                "p50, p90 and p99 of successful requests, from arrival in the runtime to the answer.",
                "s",
                _quantiles("zeroserve_request_duration_seconds", RUNTIME),
            ),
            Panel(
                "Latency at Knative's queue-proxy",
                "p50, p90 and p99 as the queue-proxy beside each replica measures them: the runtime's time "
                "plus the proxy's queue (config-observability request-metrics-protocol: prometheus).",
                "s",
                _quantiles("kn_serving_invocation_duration_seconds", KNATIVE),
            ),
            Panel(
                "Requests through Knative by status",
                "Requests the queue-proxy passed to the runtime, per second, by HTTP status.",
                "reqps",
                (
                    Query(
                        "sum by (http_response_status_code) "
                        f"(rate(kn_serving_invocation_duration_seconds_count{{{SELECTOR}}}[{RATE}]))",
                        "{{http_response_status_code}}",
                        KNATIVE,
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Cold starts",
        (
            Panel(
                "Cold starts in the last hour",
                "Runtime processes that started within the hour: each reports its cold start once.",
                "short",
                (
                    Query(
                        f"count(max_over_time({_TOTAL}[{COLD_START_WINDOW}]) "
                        f"unless {_TOTAL} offset {COLD_START_WINDOW})",
                        "cold starts",
                        RUNTIME,
                    ),
                ),
            ),
            Panel(
                "Cold-start phases",
                "p50 and p90 over the processes seen in the last hour, per phase: import of the server; "
                "fetch, load and warmup of the model (alongside the import); total, process start to ready.",
                "s",
                tuple(
                    Query(
                        f"histogram_quantile({q}, sum by (phase, le) "
                        f"(max_over_time(zeroserve_cold_start_seconds_bucket{{{SELECTOR}}}[{COLD_START_WINDOW}])))",
                        f"p{round(q * 100)} {{{{phase}}}}",
                        RUNTIME,
                    )
                    for q in (0.5, 0.9)
                ),
            ),
        ),
    ),
    Row(
        "Batching",
        (
            Panel(
                "Batch size",
                "Requests merged into one session.run: mean and p99.",
                "short",
                (
                    Query(
                        f"sum(rate(zeroserve_batch_size_sum{{{SELECTOR}}}[{RATE}])) / "
                        f"sum(rate(zeroserve_batch_size_count{{{SELECTOR}}}[{RATE}]))",
                        "mean",
                        RUNTIME,
                    ),
                    _quantile(0.99, "zeroserve_batch_size", RUNTIME),
                ),
            ),
            Panel(
                "Queue time",
                "How long requests waited for their batch to run: p50 and p99.",
                "s",
                tuple(_quantile(q, "zeroserve_queue_duration_seconds", RUNTIME) for q in (0.5, 0.99)),
            ),
        ),
    ),
    Row(
        "Capacity and the operator",
        (
            Panel(
                "In-flight requests",
                "Requests admitted by the runtimes, running or queued, summed over replicas.",
                "short",
                (Query(f"sum(zeroserve_inflight_requests{{{SELECTOR}}})", "in flight", RUNTIME),),
            ),
            Panel(
                "Replicas",
                "Runtime processes Prometheus scrapes (0 when scaled to zero).",
                "short",
                (Query(f"count({_TOTAL})", "replicas", RUNTIME),),
            ),
            Panel(
                "Ready",
                "1 while the ModelService's Ready condition is True.",
                "short",
                (Query(f"max(zeroserve_operator_modelservice_ready{{{SELECTOR}}})", "ready", OPERATOR),),
                kind="stat",
            ),
            Panel(
                "Operator reconciles by result",
                "Reconciles of all ModelServices per second, by result: anything but success is a failure "
                "to reconcile (invalid, knative_missing, error).",
                "ops",
                (
                    Query(
                        f"sum by (result) (rate(zeroserve_operator_reconciles_total[{RATE}]))",
                        "{{result}}",
                        OPERATOR,
                    ),
                ),
            ),
        ),
    ),
)

# The dashboard's variables: every ModelService the operator knows, namespace first.
VARIABLES = {
    "namespace": "label_values(zeroserve_operator_modelservice_ready, namespace)",
    "model": 'label_values(zeroserve_operator_modelservice_ready{namespace="$namespace"}, model)',
}


def queries() -> list[tuple[Panel, Query]]:
    return [(panel, query) for row in ROWS for panel in row.panels for query in panel.queries]
