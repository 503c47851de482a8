"""What the chart ships for Prometheus and Grafana, checked without a cluster: the dashboard is the one the
code generates, its flags gate the PodMonitor, dashboard and rules, promtool accepts the rules and its unit
tests fire each alert, and every metric and label the dashboard and rules use is one the runtime or the
operator exports (a rename or a dropped label fails here, as its panel would go blank)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from controlplane import Binaries
from prometheus_client.metrics import MetricWrapperBase
from prometheusproc import promtool
from test_chart import by_kind, render
from zeroserve_operator import metrics as operator_metrics
from zeroserve_operator.resources import knative, scraping
from zeroserve_operator.settings import OperatorSettings
from zeroserve_runtime.metrics import COLD_START_PHASES, RuntimeMetrics

from zeroserve.monitoring import panels
from zeroserve.monitoring.__main__ import CHART_DASHBOARD
from zeroserve.monitoring.dashboard import render as render_dashboard

ROOT = Path(__file__).resolve().parent.parent
RULES_TESTS = Path(__file__).resolve().parent / "rules"
README = ROOT / "README.md"
FLAGS = {
    "metrics.podMonitor.enabled": "PodMonitor",
    "metrics.dashboard.enabled": "ConfigMap",
    "metrics.prometheusRule.enabled": "PrometheusRule",
}
# Labels Prometheus adds to every scraped series (the chart's PodMonitor and the README's scrape config).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container"}
# Knative v0.50's queue-proxy, through its OpenTelemetry Prometheus exporter (pkg/queue/request_metric.go).
KNATIVE_SERIES = {"kn_serving_invocation_duration_seconds": {"http_response_status_code", "model"}}


def values_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_dashboard_in_the_chart_is_the_generated_one() -> None:
    assert CHART_DASHBOARD.read_text() == render_dashboard(), "run python -m zeroserve.monitoring"


def test_dashboard_has_a_panel_for_each_thing_asked_for() -> None:
    board = json.loads(CHART_DASHBOARD.read_text())
    titles = {p["title"] for p in board["panels"] if p["type"] != "row"}
    assert titles >= {
        "Request rate by outcome",
        "Success ratio",
        "Latency in the runtime",
        "Latency at Knative's queue-proxy",
        "Cold starts in the last hour",
        "Cold-start phases",
        "Batch size",
        "Queue time",
        "In-flight requests",
        "Replicas",
        "Operator reconciles by result",
    }
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs == [q.expr for _, q in panels.queries()]
    assert {"histogram_quantile(0.5,", "histogram_quantile(0.9,", "histogram_quantile(0.99,"} <= {
        e.split(" ")[0] for e in exprs
    }
    # Per ModelService: every runtime and queue-proxy query is narrowed to the chosen one.
    for _, q in panels.queries():
        if q.source != panels.OPERATOR:
            assert q.expr.count(panels.SELECTOR) == q.expr.count("{"), q.expr
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "model"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


@pytest.mark.parametrize("flag", FLAGS)
def test_each_monitoring_object_is_behind_its_flag(binaries: Binaries, flag: str, tmp_path: Path) -> None:
    kind = FLAGS[flag]
    off = render(binaries)
    assert (
        not [d for d in off if d["kind"] == kind and "dashboard" in d["metadata"]["name"]]
        or kind != "ConfigMap"
    )
    assert not by_kind(off, "PodMonitor") and not by_kind(off, "PrometheusRule")
    section = flag.split(".")[1]
    on = render(binaries, values_file(tmp_path, {"metrics": {section: {"enabled": True}}}))
    (made,) = [
        d for d in on if d["kind"] == kind and (kind != "ConfigMap" or "dashboard" in d["metadata"]["name"])
    ]
    assert made["metadata"]["namespace"] == "zeroserve"


def test_dashboard_configmap_carries_the_dashboard_for_grafanas_sidecar(
    binaries: Binaries, tmp_path: Path
) -> None:
    docs = render(binaries, values_file(tmp_path, {"metrics": {"dashboard": {"enabled": True}}}))
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["zeroserve-modelservice.json"]) == json.loads(CHART_DASHBOARD.read_text())


def _pod_template() -> dict:
    body = {
        "apiVersion": "zeroserve.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"},
        "spec": {"model": {"uri": "https://example.com/m.onnx"}},
    }
    return knative.build_knative_service(body, OperatorSettings())["spec"]["template"]


def test_podmonitor_selects_what_the_operator_puts_on_revision_pods(
    binaries: Binaries, tmp_path: Path
) -> None:
    docs = render(binaries, values_file(tmp_path, {"metrics": {"podMonitor": {"enabled": True}}}))
    (pm,) = by_kind(docs, "PodMonitor")
    template = _pod_template()
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    annotations = template["metadata"]["annotations"]
    assert annotations[scraping.SCRAPE] == "true"
    assert annotations[scraping.SCRAPE_PORT] == str(knative.HTTP_PORT)
    assert annotations[scraping.SCRAPE_PATH] == "/metrics"
    runtime, queue_proxy = pm["spec"]["podMetricsEndpoints"]
    keep = runtime["relabelings"][0]
    assert keep["action"] == "keep" and re.fullmatch(keep["regex"], f"{knative.CONTAINER_NAME};true")
    assert queue_proxy["port"] == scraping.QUEUE_PROXY_METRICS_PORT_NAME
    assert queue_proxy["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_zeroserve_dev_modelservice"], "targetLabel": "model"}
    ]
    assert knative.MODELSERVICE_LABEL == "zeroserve.dev/modelservice"


def test_queue_proxy_port_is_the_one_the_pinned_knative_serves() -> None:
    """The port name and number the PodMonitor and scrape config use, read from the pinned Knative source."""
    from controlplane import read_versions

    version = read_versions()["KNATIVE_SERVING_VERSION"]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"knative.dev/serving@{version}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT / "hack",
    )
    assert out.returncode == 0, f"go mod download knative.dev/serving@{version}: {out.stderr}"
    serving = Path(json.loads(out.stdout)["Dir"])
    helpers = (serving / "pkg/apis/serving/v1/revision_helpers.go").read_text()
    assert f'UserQueueMetricsPortName = "{scraping.QUEUE_PROXY_METRICS_PORT_NAME}"' in helpers
    otel = (serving / "pkg/queue/sharedmain/otel.go").read_text()
    assert "networking.UserQueueMetricsPort" in otel
    assert '"kn.serving.invocation.duration"' in (serving / "pkg/queue/request_metric.go").read_text()


def rules_file(binaries: Binaries, dest: Path, *values: Path) -> Path:
    docs = render(binaries, *values)
    (rule,) = by_kind(docs, "PrometheusRule")
    dest.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return dest


def test_rendered_rules_pass_promtool_check(binaries: Binaries, tmp_path: Path) -> None:
    path = rules_file(
        binaries,
        tmp_path / "rules.yaml",
        values_file(tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}}),
    )
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout, out.stdout


def test_each_alert_fires_on_synthetic_series_and_stays_silent_on_healthy_ones(
    binaries: Binaries, tmp_path: Path
) -> None:
    rules_file(binaries, tmp_path / "rules.yaml", RULES_TESTS / "values.yaml")
    shutil.copy(RULES_TESTS / "alerts.test.yaml", tmp_path)
    out = promtool("test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES_TESTS / "alerts.test.yaml").read_text()))
    rules = yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]
    alerts = {r["alert"] for g in rules for r in g["rules"]}
    assert tested == alerts


def test_every_alert_has_a_summary_a_runbook_url_and_a_readme_line(
    binaries: Binaries, tmp_path: Path
) -> None:
    rules = yaml.safe_load(rules_file(binaries, tmp_path / "r.yaml", RULES_TESTS / "values.yaml").read_text())
    readme = README.read_text()
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())
        assert re.search(rf"^\| `{rule['alert']}` \|.+\|.+\|$", readme, re.M), (
            f"README runbook for {rule['alert']}"
        )


def families() -> list[MetricWrapperBase]:
    """The runtime's and the operator's metrics, as declared."""
    declared = [*vars(RuntimeMetrics()).values(), *vars(operator_metrics).values()]
    return [m for m in declared if isinstance(m, MetricWrapperBase)]


def exported() -> dict[str, set[str]]:
    """Every series name the runtime, the operator and Knative's queue-proxy expose, with its labels."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    names: dict[str, set[str]] = {}
    for metric in families():
        for suffix in suffixes[metric._type]:
            names[metric._name + suffix] = set(metric._labelnames) | (
                {"le"} if suffix == "_bucket" else set()
            )
    for name, labels in KNATIVE_SERIES.items():
        for suffix in suffixes["histogram"]:
            names[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


SERIES = re.compile(r"\b((?:zeroserve|kn)_[a-z_]+)(\{[^}]*\})?")
BY = re.compile(r"\b(?:by|on) \(([^)]*)\)")


def check_expr(expr: str, names: dict[str, set[str]]) -> None:
    for name, matchers in SERIES.findall(expr):
        assert name in names, f"{name} in {expr!r} is exported by nobody"
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        assert used <= names[name] | TARGET_LABELS, f"{name}: {used - names[name]} not among its labels"
    for group in BY.findall(expr):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        known = set().union(*(names[n] for n, _ in SERIES.findall(expr))) | TARGET_LABELS
        assert labels <= known, f"{labels - known} in {expr!r}"


def test_every_dashboard_and_rule_series_is_exported_with_the_labels_used(
    binaries: Binaries, tmp_path: Path
) -> None:
    names = exported()
    for _, query in panels.queries():
        check_expr(query.expr, names)
    for query in panels.VARIABLES.values():
        check_expr(query, names)
    rules = yaml.safe_load(rules_file(binaries, tmp_path / "r.yaml", RULES_TESTS / "values.yaml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        check_expr(rule["expr"], names)
    assert set(COLD_START_PHASES) == {"import", "fetch", "load", "warmup", "total"}


def test_check_expr_catches_a_rename_and_a_dropped_label() -> None:
    names = exported()
    with pytest.raises(AssertionError, match="exported by nobody"):
        check_expr('sum(rate(zeroserve_request_seconds_bucket{model="m"}[5m]))', names)
    without_model = {k: v - {"model"} for k, v in names.items()}
    with pytest.raises(AssertionError, match="not among its labels"):
        check_expr(panels.queries()[0][1].expr, without_model)


def test_every_metric_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(zeroserve_\w+)`", README.read_text(), re.M))
    declared = {m._name + ("_total" if m._type == "counter" else "") for m in families()}
    assert declared <= documented, declared - documented
