"""What a simulated configuration costs, from the bench's list prices (zeroserve_loadgen.pricing) plus
what advising needs besides: Lambda provisioned concurrency, Cloud Run's idle min instances, managed
real-time endpoints, and self-hosted replicas priced by the replica-second rather than by the node-hour,
so that scale to zero shows in the cost.

Prices added here were recorded on ADVISE_PRICES_RECORDED from the pages named beside them (AWS
us-east-1, Google Cloud us-central1 / tier 1; on demand, no free tier, no discounts). Prices change:
every field can be overridden in code, and the sources are in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from zeroserve_loadgen.pricing import (
    CLOUD_RUN_SOURCE,
    EC2_SOURCE,
    GCE_SOURCE,
    LAMBDA_GB_SECOND_USD,
    LAMBDA_SOURCE,
    NODE_PRESETS,
    PRICES_RECORDED,
    CloudRunPricing,
    LambdaPricing,
)

ADVISE_PRICES_RECORDED = "2026-11-29"
SAGEMAKER_SOURCE = "https://aws.amazon.com/sagemaker/pricing/ (real-time inference, us-east-1)"
VERTEX_SOURCE = "https://cloud.google.com/vertex-ai/pricing (prediction, us-central1)"

# Provisioned concurrency: the hold price per GB-second, and the lower duration price of the requests
# it serves. LAMBDA_SOURCE on ADVISE_PRICES_RECORDED.
LAMBDA_PC_GB_SECOND_USD = {"x86_64": 0.0000041667, "arm64": 0.0000033334}
LAMBDA_PC_DURATION_GB_SECOND_USD = {"x86_64": 0.0000097222, "arm64": 0.0000077778}
# Cloud Run min instances while idle, request-based billing (CLOUD_RUN_SOURCE, "idle min instance").
CLOUD_RUN_IDLE_VCPU_SECOND_USD = 0.0000025
CLOUD_RUN_IDLE_GIB_SECOND_USD = 0.0000025


@dataclass(frozen=True)
class Node:
    hourly_usd: float
    vcpu: float
    description: str
    source: str
    recorded: str
    gpu: bool = False


def _nodes() -> dict[str, Node]:
    out = {}
    for name, (hourly, description) in NODE_PRESETS.items():
        vcpu = float(description.split(" vCPU")[0])
        source = EC2_SOURCE if name.startswith("aws-") else GCE_SOURCE
        out[name] = Node(hourly, vcpu, description, source, PRICES_RECORDED, gpu="NVIDIA" in description)
    rec = ADVISE_PRICES_RECORDED
    out.update(
        {
            "sagemaker-ml.c5.large": Node(
                0.102, 2, "SageMaker endpoint, 2 vCPU, 4 GiB", SAGEMAKER_SOURCE, rec
            ),
            "sagemaker-ml.c5.xlarge": Node(
                0.204, 4, "SageMaker endpoint, 4 vCPU, 8 GiB", SAGEMAKER_SOURCE, rec
            ),
            "sagemaker-ml.c5.2xlarge": Node(
                0.408, 8, "SageMaker endpoint, 8 vCPU, 16 GiB", SAGEMAKER_SOURCE, rec
            ),
            "sagemaker-ml.g4dn.xlarge": Node(
                0.7364, 4, "SageMaker endpoint, 4 vCPU, 16 GiB, 1x NVIDIA T4", SAGEMAKER_SOURCE, rec, gpu=True
            ),
            "vertex-n1-standard-4": Node(
                0.2185, 4, "Vertex AI endpoint, n1-standard-4, 15 GiB", VERTEX_SOURCE, rec
            ),
            "vertex-n1-standard-4-t4": Node(
                0.2185 + 0.4025,
                4,
                "Vertex AI endpoint, n1-standard-4 + 1x NVIDIA T4",
                VERTEX_SOURCE,
                rec,
                gpu=True,
            ),
        }
    )
    return out


NODES: dict[str, Node] = _nodes()


def lambda_cost(
    memory_mb: int,
    architecture: str,
    durations_s: np.ndarray,
    init_s: np.ndarray,
    on_provisioned: np.ndarray,
    provisioned: int,
    wall_s: float,
) -> float:
    """On-demand requests: duration rounded up to 1 ms, INIT billed (zeroserve_loadgen's LambdaPricing).
    Requests on provisioned environments: the lower duration price; plus the provisioned environments
    held for the whole run."""
    gb = memory_mb / 1024
    ms = np.ceil(np.round(durations_s * 1000 + init_s * 1000, 6))
    od = ~on_provisioned
    on_demand = float(ms[od].sum()) / 1000 * gb * LAMBDA_GB_SECOND_USD[architecture]
    pc_requests = float(ms[on_provisioned].sum()) / 1000 * gb * LAMBDA_PC_DURATION_GB_SECOND_USD[architecture]
    held = provisioned * gb * wall_s * LAMBDA_PC_GB_SECOND_USD[architecture]
    fee = LambdaPricing().request_usd_per_million / 1e6 * len(durations_s)
    return on_demand + pc_requests + held + fee


def cloud_run_cost(
    vcpu: float, memory_gib: float, busy_s: float, idle_min_instance_s: float, requests: int
) -> float:
    """Request-based billing: instance time while it serves at least one request (startup included),
    per vCPU and GiB; idle min instances at the idle rate; plus the request fee. Rounding to 100 ms is
    per busy stretch in reality; it is left out here, a small under-estimate at low load."""
    p = CloudRunPricing(vcpu=vcpu, memory_gib=memory_gib)
    active = busy_s * (vcpu * p.vcpu_second_usd + memory_gib * p.gib_second_usd)
    idle = idle_min_instance_s * (
        vcpu * CLOUD_RUN_IDLE_VCPU_SECOND_USD + memory_gib * CLOUD_RUN_IDLE_GIB_SECOND_USD
    )
    return active + idle + p.request_usd_per_million / 1e6 * requests


def replica_second_usd(node: str, per_node: int) -> float:
    """A replica's share of its node as replicas pack: a node that fits `per_node` of them (Knative.per_node:
    the node's free CPU over the replica's and its queue-proxy's requests) costs 1/per_node of its price
    per replica while the replica exists. A 4-vCPU c7i.xlarge fits three 1-vCPU replicas beside their
    queue-proxies, so each costs a third of its hour, not a quarter. What scales to zero costs nothing
    while at zero."""
    if per_node < 1:
        raise ValueError(f"no replica fits a {node} node")
    return NODES[node].hourly_usd / 3600 / per_node


def knative_cost(node: str, per_node: int, replica_seconds: float, fixed_nodes: int, wall_s: float) -> float:
    return (
        replica_seconds * replica_second_usd(node, per_node)
        + fixed_nodes * NODES[node].hourly_usd * wall_s / 3600
    )


def knative_priced_as(
    node: str, per_node: int, vcpu: float, queue_proxy_vcpu: float, free_vcpu: float
) -> str:
    """How a Knative candidate's cost was reached, for the report."""
    return (
        f"1/{per_node} of one {node} node (${NODES[node].hourly_usd:g}/h) per replica: {per_node} fit its "
        f"{free_vcpu:g} free vCPU at {vcpu:g} + {queue_proxy_vcpu:g} (queue-proxy) each"
    )


def always_on_cost(preset: str, replicas: int, wall_s: float) -> float:
    return NODES[preset].hourly_usd * replicas * wall_s / 3600


def per_million(cost: float, successes: int) -> float:
    return math.inf if successes == 0 else cost / successes * 1e6


def sources() -> dict[str, str]:
    return {
        "lambda": f"{LAMBDA_SOURCE}; provisioned concurrency recorded {ADVISE_PRICES_RECORDED}",
        "cloud_run": f"{CLOUD_RUN_SOURCE}; idle min instances recorded {ADVISE_PRICES_RECORDED}",
        "nodes": f"{EC2_SOURCE}; {GCE_SOURCE} (recorded {PRICES_RECORDED})",
        "endpoints": f"{SAGEMAKER_SOURCE}; {VERTEX_SOURCE} (recorded {ADVISE_PRICES_RECORDED})",
    }
