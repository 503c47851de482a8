"""How Prometheus finds a ModelService's pods: the `prometheus.io/*` annotations on the revision template.

Knative copies a revision template's annotations onto its pods, so every replica, including the one a
scale from zero brings up, carries them. They name the runtime's own /metrics (its HTTP port serves it
whatever protocol the ModelService routes). The queue-proxy beside it is found by its port name
(`http-usermetric`), as the chart's PodMonitor and the README's scrape config do; one set of
`prometheus.io/*` annotations can name only one port.
"""

from __future__ import annotations

SCRAPE = "prometheus.io/scrape"
SCRAPE_PORT = "prometheus.io/port"
SCRAPE_PATH = "prometheus.io/path"
METRICS_PATH = "/metrics"
# Knative v0.50's queue-proxy serves its request metrics here once config-observability says
# request-metrics-protocol: prometheus (knative.dev/serving pkg/queue/sharedmain/otel.go).
QUEUE_PROXY_METRICS_PORT_NAME = "http-usermetric"
QUEUE_PROXY_METRICS_PORT = 9091


def scrape_annotations(runtime_http_port: int) -> dict[str, str]:
    return {SCRAPE: "true", SCRAPE_PORT: str(runtime_http_port), SCRAPE_PATH: METRICS_PATH}
