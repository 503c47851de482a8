"""The Grafana dashboard, built from `panels` with grafana-foundation-sdk (Apache-2.0), never edited by
hand: `python -m zeroserve.monitoring` rewrites the chart's copy, and a test fails when it differs."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

from zeroserve.monitoring.panels import ROWS, VARIABLES, Panel

UID = "zeroserve-modelservice"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _panel(panel: Panel, panel_id: int) -> Any:
    builder = (stat.Panel() if panel.kind == "stat" else timeseries.Panel()).id(panel_id).title(panel.title)
    builder = builder.description(panel.description).unit(panel.unit).datasource(DATASOURCE)
    builder = builder.height(8).span(12 if panel.kind == "timeseries" else 6)
    for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
        builder = builder.with_target(
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(ref)
            .datasource(DATASOURCE)
        )
    return builder


def build() -> dict[str, Any]:
    board = (
        gd.Dashboard("Zeroserve: ModelService")
        .uid(UID)
        .description(
            "One ModelService: requests, latency, cold starts, batching, replicas and the operator. "
            "Metrics and labels are listed in the Zeroserve README."
        )
        .tags(["zeroserve", "knative", "model-serving"])
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for name, query in VARIABLES.items():
        board = board.with_variable(
            gd.QueryVariable(name)
            .label("ModelService" if name == "model" else "Namespace")
            .datasource(DATASOURCE)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    ids = iter(range(1, 1000))  # Grafana links and embeds panels by id
    for row in ROWS:
        board = board.with_row(gd.Row(row.title).id(next(ids)))
        for panel in row.panels:
            board = board.with_panel(_panel(panel, next(ids)))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"
