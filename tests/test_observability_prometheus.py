"""A real Prometheus on loopback scrapes two real runtime processes (two cold starts) and the real operator
while traffic flows, a bad request included. Every dashboard query over the runtime's and the operator's
series returns data through the query API, and agrees with the processes' own counters: the request count
exactly, the latency quantiles to the bucket. (The queue-proxy's queries run on the test node.)"""

from __future__ import annotations

import asyncio
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from controlplane import ControlPlane
from kubernetes_asyncio import client as aclient
from operatorproc import OperatorProcess
from prometheus_client.parser import text_string_to_metric_families
from prometheusproc import Prometheus, finite
from runtimeproc import RuntimeProcess
from test_operator import CPU_EXAMPLE, Cluster, converged, example
from waiting import eventually

from zeroserve.monitoring import panels

pytestmark = pytest.mark.controlplane
RATE_INTERVAL = "1m"
GOOD, BAD, FIRST_ROUND = 60, 2, 10


def infer(runtime: RuntimeProcess, data: list[float]) -> int:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, len(data)], "datatype": "FP32", "data": data}]})
    url = f"{runtime.url}/v2/models/{runtime.name}/infer"
    request = urllib.request.Request(url, data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def substitute(expr: str, namespace: str, model: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", namespace)
        .replace("$model", model)
    )


def runtime_series(runtimes: list[RuntimeProcess], name: str) -> dict[tuple, float]:
    """Samples called `name` on the runtimes' own /metrics, summed over processes, by label set."""
    totals: dict[tuple, float] = {}
    for runtime in runtimes:
        for family in text_string_to_metric_families(runtime.metrics()):
            for sample in family.samples:
                if sample.name == name:
                    key = tuple(sorted(sample.labels.items()))
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def latency_buckets(runtimes: list[RuntimeProcess]) -> dict[float, float]:
    """The processes' request-duration buckets, summed over them: le -> cumulative count."""
    return {
        float(dict(k)["le"]): v
        for k, v in runtime_series(runtimes, "zeroserve_request_duration_seconds_bucket").items()
    }


def quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's histogram_quantile over cumulative bucket counts, by upper bound."""
    bounds = sorted(buckets)
    rank = q * buckets[math.inf]
    below, lower = 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == math.inf:
                return bounds[-2]
            return lower + (upper - lower) * (rank - below) / (buckets[upper] - below)
        below, lower = buckets[upper], upper
    raise AssertionError("no +Inf bucket")


def bucket_of(value: float, bounds: list[float]) -> tuple[float, float]:
    lower = 0.0
    for upper in sorted(bounds):
        if value <= upper:
            return lower, upper
        lower = upper
    return lower, math.inf


@pytest.fixture
def operator(
    control_plane: ControlPlane, modelservice_crd: str, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with OperatorProcess(control_plane, tmp_path / "operator.log", [namespace]) as proc:
        yield proc  # type: ignore[misc]
    print(proc.tail())


async def test_dashboard_queries_return_what_the_processes_count(
    operator: OperatorProcess,
    api_client: aclient.ApiClient,
    namespace: str,
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    cluster = Cluster(api_client, namespace)
    body = example(CPU_EXAMPLE)
    name = body["metadata"]["name"]
    body["metadata"]["annotations"] = {"zeroserve.dev/latency-p99-target-seconds": "0.25"}
    await cluster.create(body)
    await eventually(lambda: converged(cluster, name), within=30, what="first reconcile")
    await cluster.knative_reports(name, ready=True)

    targets = tmp_path / "runtimes.yaml"
    targets.write_text("[]")
    prometheus = Prometheus(
        tmp_path / "prometheus",
        [
            {
                "job_name": "zeroserve-runtime",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            },
            {
                "job_name": "zeroserve-operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
            },
        ],
    )
    runtimes = [
        RuntimeProcess(
            models["linear"], tmp_path / f"runtime-{i}.log", name=name, max_batch_size=8, max_queue_delay_ms=5
        )
        for i in range(2)
    ]
    with prometheus:
        for runtime in runtimes:
            # Each process is a cold start; the target appears as a scale-up's pod would.
            runtime.start()
            listed = [
                {"targets": [r.address], "labels": {"namespace": namespace}} for r in runtimes if r.process
            ]
            targets.write_text(yaml.safe_dump(listed))

        async def both_scraped() -> bool:
            return len([t for t in prometheus.targets_up() if t["labels"]["job"] == "zeroserve-runtime"]) == 2

        await eventually(both_scraped, within=30, what="both runtimes scraped")
        selector = f'namespace="{namespace}", model="{name}"'

        def traffic(good: int) -> list[int]:
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda i: infer(runtimes[i % 2], [i, 2, 3, 4]), range(good)))
            return [*statuses, infer(runtimes[0], [1.0, 2.0])]  # the wrong shape: outcome="invalid"

        # Two rounds with a scrape between, as steady traffic looks to rate(): a counter's first scrape
        # is its baseline.
        statuses = traffic(FIRST_ROUND)

        async def baseline() -> bool:
            got = prometheus.query(f"sum(zeroserve_requests_total{{{selector}}})")
            return bool(got) and float(got[0]["value"][1]) == FIRST_ROUND + 1

        await eventually(baseline, within=30, what="the first round scraped")
        # The processes' own latency buckets at the baseline: the dashboard's rate()-based quantiles see
        # only what came after it, so they are checked against the second round's buckets alone.
        first_round = latency_buckets(runtimes)
        statuses += traffic(GOOD - FIRST_ROUND)
        assert statuses.count(200) == GOOD and statuses.count(400) == BAD, statuses

        own = runtime_series(runtimes, "zeroserve_requests_total")
        by_outcome = {dict(k)["outcome"]: v for k, v in own.items()}
        assert by_outcome == {"success": GOOD, "invalid": BAD}

        async def scraped_all() -> dict[str, float] | None:
            got = prometheus.query(f"sum by (outcome) (zeroserve_requests_total{{{selector}}})")
            seen = {s["metric"]["outcome"]: float(s["value"][1]) for s in got}
            return seen if seen == by_outcome else None

        # Exactly the processes' own counts, once Prometheus has scraped after the last request.
        await eventually(scraped_all, within=30, what=f"Prometheus to count {by_outcome}")
        await asyncio.sleep(2)  # a couple more scrapes, so rate() has points after the traffic

        for panel, query in panels.queries():
            if query.source == panels.KNATIVE:
                continue
            expr = substitute(query.expr, namespace, name)
            result = prometheus.query(expr)
            values = finite(result)
            assert values, f"panel {panel.title!r}: {expr} returned {result}"
            for label in re.findall(r"\{\{(\w+)\}\}", query.legend):
                assert all(label in s["metric"] for s in result), f"{panel.title}: no {label} in {result}"

        def one(expr: str) -> float:
            (value,) = finite(prometheus.query(substitute(expr, namespace, name)))
            return value

        by_title = {p.title: p for row in panels.ROWS for p in row.panels}
        assert one(by_title["Cold starts in the last hour"].queries[0].expr) == 2
        assert one(by_title["Replicas"].queries[0].expr) == 2
        assert one(by_title["Ready"].queries[0].expr) == 1
        assert one(by_title["In-flight requests"].queries[0].expr) == 0
        ratio = one(by_title["Success ratio"].queries[0].expr)
        # The second round's share: the first is the counters' baseline.
        assert ratio == pytest.approx((GOOD - FIRST_ROUND) / (GOOD - FIRST_ROUND + 1), rel=0.01)
        phases = prometheus.query(substitute(by_title["Cold-start phases"].queries[0].expr, namespace, name))
        assert {s["metric"]["phase"] for s in phases} == {"import", "fetch", "load", "warmup", "total"}
        target = prometheus.value(f"zeroserve_operator_modelservice_latency_target_seconds{{{selector}}}")
        assert target == 0.25

        # Latency quantiles, like with like: the processes' own cumulative buckets, summed, against
        # Prometheus's over the same cumulative counts; and the dashboard's rate() over the run against
        # the buckets of the requests after the baseline (a p50 of both rounds once fell just over a bucket
        # bound that the second round's alone did not reach: 0.00521 against 0.005).
        buckets = latency_buckets(runtimes)
        second_round = {le: n - first_round.get(le, 0) for le, n in buckets.items()}
        bounds = [b for b in buckets if b != math.inf]
        for panel_query in by_title["Latency in the runtime"].queries:
            q = float(panel_query.expr.split("(", 2)[1].split(",")[0])
            summed = f"sum by (le) (zeroserve_request_duration_seconds_bucket{{{selector}}})"
            raw = one(f"histogram_quantile({q}, {summed})")
            assert raw == pytest.approx(quantile(q, buckets), rel=1e-9)
            expected = quantile(q, second_round)
            lower, upper = bucket_of(expected, bounds)
            assert lower <= one(panel_query.expr) <= upper, (q, expected, lower, upper)

        # The dashboard's variables list this ModelService.
        assert namespace in prometheus.api(
            "label/namespace/values", **{"match[]": "zeroserve_operator_modelservice_ready"}
        )
        models_in_ns = prometheus.api(
            "label/model/values",
            **{"match[]": f'zeroserve_operator_modelservice_ready{{namespace="{namespace}"}}'},
        )
        assert models_in_ns == [name]

        for runtime in runtimes:
            runtime.stop()
