"""On the test node with real Knative: the real Prometheus, configured with the README's scrape jobs
(examples/prometheus-scrape-config.yaml, as they are), finds a ModelService's revision pods by the
operator's prometheus.io/* annotations and Knative's queue-proxy by its port name, and sees the cold start
of a real scale from zero in `zeroserve_cold_start_seconds`, exactly as the pod reports it. Every
dashboard query, the queue-proxy's included, returns data, and the request counts of runtime and
queue-proxy agree with the requests sent."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml
from controlplane import Binaries, ControlPlane
from knative import KNATIVE_NAMESPACE
from pods import apply, pods, wait_for
from prometheus_client.parser import text_string_to_metric_families
from prometheusproc import Prometheus, finite
from test_chart import by_kind, render
from test_serverless import Ingress, infer_body, modelservice, modelservice_ready
from zeroserve_operator.resources import scraping
from zeroserve_runtime.metrics import COLD_START_PHASES

from zeroserve.monitoring import panels

ROOT = Path(__file__).resolve().parent.parent
SCRAPE_CONFIG = ROOT / "examples" / "prometheus-scrape-config.yaml"
NAME = "observed"
WARM = 6
RATE_INTERVAL = "1m"
# What README's observability section tells users to set: queue-proxy serves its request metrics on
# http-usermetric (9091) only with it (knative.dev/serving v0.50 pkg/queue/sharedmain/otel.go).
REQUEST_METRICS = {"request-metrics-protocol": "prometheus"}


@pytest.fixture
def request_metrics(knative_cluster: ControlPlane) -> Iterator[None]:
    """config-observability set for the test, removed after it so later tests' queue-proxies are as
    before. Set before the ModelService exists: queue-proxy reads it from its environment at start, and a
    change re-renders every revision's Deployment, which would roll the replica under test."""

    def patch(data: dict[str, Any]) -> None:
        knative_cluster.kubectl(
            "patch",
            "configmap",
            "config-observability",
            "-n",
            KNATIVE_NAMESPACE,
            "--type=merge",
            "-p",
            json.dumps({"data": data}),
        )

    patch(REQUEST_METRICS)
    yield
    patch(dict.fromkeys(REQUEST_METRICS))


def scrape_configs(kubeconfig: Path) -> list[dict[str, Any]]:
    """The README's jobs, unchanged but for where the API server is: in a cluster Prometheus finds it
    from its service account, here the test cluster's kubeconfig names it."""
    jobs = yaml.safe_load(SCRAPE_CONFIG.read_text())
    for job in jobs:
        for sd in job["kubernetes_sd_configs"]:
            sd["kubeconfig_file"] = str(kubeconfig)
    return jobs


def live_pods(plane: ControlPlane, ns: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(plane, ns, f"serving.knative.dev/service={NAME}")
        if "deletionTimestamp" not in p["metadata"]
    ]


def own_cold_start(plane: ControlPlane, ns: str, pod: str) -> dict[tuple[str, str], float]:
    """The pod's own cold-start samples, by (sample name, phase), from its /metrics through the API
    server: what Prometheus should hold."""
    text = plane.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics").stdout
    return {
        (s.name, s.labels["phase"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "zeroserve_cold_start_seconds"
        for s in family.samples
        if s.name.endswith(("_sum", "_count"))
    }


def by_phase(prometheus: Prometheus, expr: str) -> dict[str, float]:
    return {s["metric"]["phase"]: float(s["value"][1]) for s in prometheus.query(expr)}


def test_prometheus_scrapes_revision_pods_and_sees_the_cold_start_of_a_scale_from_zero(
    knative_cluster: ControlPlane,
    chart_operator: str,
    ns: str,
    model_url: str,
    request_metrics: None,
    binaries: Binaries,
    tmp_path: Path,
) -> None:
    plane = knative_cluster
    prometheus = Prometheus(tmp_path / "prometheus", scrape_configs(plane.kubeconfig))
    with prometheus:
        apply(plane, ns, [modelservice(NAME, model_url)])
        ms = wait_for(lambda: modelservice_ready(plane, ns, NAME), within=180, what="the ModelService Ready")
        host = urlparse(ms["status"]["url"]).hostname or ""
        (first,) = [p["metadata"]["name"] for p in live_pods(plane, ns)]
        selector = f'namespace="{ns}", model="{NAME}"'
        total = f'zeroserve_cold_start_seconds_count{{{selector}, phase="total"}}'

        # The first replica is found by its annotations and scraped before it goes: a cold start too.
        wait_for(
            lambda: prometheus.query(f'{total[:-1]}, pod="{first}"}}'),
            within=60,
            what=f"Prometheus to scrape the first replica {first}",
        )
        # Zero means gone, not terminating: a terminating replica still answers scrapes while it drains.
        wait_for(
            lambda: not pods(plane, ns, f"serving.knative.dev/service={NAME}"),
            within=180,
            what="zero replicas",
            interval=1,
        )

        # A request to zero replicas: the activator holds it while a new pod starts cold.
        x = np.random.default_rng(7).standard_normal((1, 3, 224, 224), dtype=np.float32)
        ingress = Ingress(plane)
        t = time.monotonic()
        status, headers, body = ingress.post(host, f"/v2/models/{NAME}/infer", infer_body(x))
        cold_seconds = time.monotonic() - t
        assert status == 200, body[:500]
        assert headers.get("x-zeroserve-cold-start") == "1", headers
        (pod,) = live_pods(plane, ns)
        cold = pod["metadata"]["name"]
        assert cold != first
        own = own_cold_start(plane, ns, cold)

        # The chart's PodMonitor would select this very pod and both its endpoints.
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump({"metrics": {"podMonitor": {"enabled": True}}}))
        (monitor,) = by_kind(render(binaries, values), "PodMonitor")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        annotations = pod["metadata"]["annotations"]
        assert annotations[scraping.SCRAPE] == "true" and annotations[scraping.SCRAPE_PATH] == "/metrics"
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        runtime_endpoint, queue_endpoint = monitor["spec"]["podMetricsEndpoints"]
        keep = runtime_endpoint["relabelings"][0]
        assert keep["action"] == "keep" and re.fullmatch(
            keep["regex"], f"runtime;{annotations[scraping.SCRAPE]}"
        )
        assert "runtime" in containers
        assert queue_endpoint["port"] in {p["name"] for p in containers["queue-proxy"]["ports"]}
        env = {e["name"]: e.get("value", "") for e in containers["queue-proxy"]["env"]}
        assert '"prometheus"' in env["OBSERVABILITY_CONFIG"], env["OBSERVABILITY_CONFIG"]

        # Both of the pod's targets, as the README's jobs make them: the runtime at the annotated port.
        def targets() -> dict[str, dict[str, Any]] | None:
            up = {t["labels"]["job"]: t for t in prometheus.targets_up() if t["labels"].get("pod") == cold}
            return up if {"zeroserve-runtime", "zeroserve-queue-proxy"} <= up.keys() else None

        up = wait_for(targets, within=30, what=f"the runtime and queue-proxy of {cold} scraped")
        ip = pod["status"]["podIP"]
        assert (
            up["zeroserve-runtime"]["scrapeUrl"] == f"http://{ip}:{annotations[scraping.SCRAPE_PORT]}/metrics"
        )
        assert (
            up["zeroserve-queue-proxy"]["scrapeUrl"]
            == f"http://{ip}:{scraping.QUEUE_PROXY_METRICS_PORT}/metrics"
        )
        assert up["zeroserve-queue-proxy"]["labels"]["model"] == NAME

        # The scale from zero's cold start, exactly as the pod counts it, phase by phase.
        on_pod = f'{selector}, pod="{cold}"'
        wait_for(
            lambda: (
                len(prometheus.query(f"zeroserve_cold_start_seconds_count{{{on_pod}}}"))
                == len(COLD_START_PHASES)
            ),
            within=30,
            what=f"the cold start of {cold} in Prometheus",
        )
        for suffix in ("_sum", "_count"):
            seen = by_phase(prometheus, f"zeroserve_cold_start_seconds{suffix}{{{on_pod}}}")
            expected = {phase: v for (name, phase), v in own.items() if name.endswith(suffix)}
            assert seen == expected and seen.keys() == set(COLD_START_PHASES), (suffix, seen, expected)
        counts = by_phase(prometheus, f"zeroserve_cold_start_seconds_count{{{on_pod}}}")
        assert set(counts.values()) == {1.0}, counts
        # Process start to ready is within what the client waited for its cold answer.
        assert 0 < own[("zeroserve_cold_start_seconds_sum", "total")] < cold_seconds

        # The queue-proxy counted the cold request: its first sample is the baseline rate() starts from.
        qp_count = f"sum(kn_serving_invocation_duration_seconds_count{{{on_pod}}})"
        wait_for(lambda: prometheus.value(qp_count) == 1, within=30, what="the queue-proxy's count of 1")
        for _ in range(WARM):
            status, _, body = ingress.post(host, f"/v2/models/{NAME}/infer", infer_body(x))
            assert status == 200, body[:500]

        # Every request, counted by both, no more: probes are not requests.
        runtime_count = f'sum(zeroserve_requests_total{{{on_pod}, outcome="success"}})'
        wait_for(
            lambda: prometheus.value(qp_count) == prometheus.value(runtime_count) == 1 + WARM,
            within=30,
            what=f"{1 + WARM} requests in both counts",
        )
        # The queue-proxy's time wraps the runtime's.
        qp_seconds = prometheus.value(f"sum(kn_serving_invocation_duration_seconds_sum{{{on_pod}}})")
        runtime_seconds = prometheus.value(f"sum(zeroserve_request_duration_seconds_sum{{{on_pod}}})")
        assert qp_seconds is not None and runtime_seconds is not None
        assert qp_seconds >= runtime_seconds > 0
        time.sleep(2)  # a scrape or two after the traffic, so rate() has points after it
        # One instant for every query, so the pod scaling away meanwhile changes nothing.
        at = time.time()

        for panel, query in panels.queries():
            expr = (
                query.expr.replace("$__rate_interval", RATE_INTERVAL)
                .replace("$namespace", ns)
                .replace("$model", NAME)
            )
            result = prometheus.query(expr, at=at)
            assert finite(result), f"panel {panel.title!r} ({query.source}): {expr} returned {result}"
            for label in re.findall(r"\{\{(\w+)\}\}", query.legend):
                assert all(label in s["metric"] for s in result), f"{panel.title}: no {label} in {result}"

            if panel.title == "Cold starts in the last hour":
                assert finite(result) == [2], result  # the first replica and the scale from zero
            if panel.title == "Replicas":
                replicas = prometheus.query(f"{total}", at=at)
                assert finite(result) == [1], [s["metric"]["pod"] for s in replicas]
            if panel.title == "Success ratio":
                assert finite(result) == [1], result
            if panel.title == "Requests through Knative by status":
                assert {s["metric"]["http_response_status_code"] for s in result} == {"200"}, result
            if panel.title == "Cold-start phases":
                assert {s["metric"]["phase"] for s in result} == set(COLD_START_PHASES), result
