"""What Zeroserve ships for Prometheus and Grafana: the dashboard's queries (`panels`), the dashboard built
from them with grafana-foundation-sdk (`dashboard`), written into the chart by `python -m
zeroserve.monitoring`. Nothing here is imported by the runtime or the operator."""
