"""Cost per 1M inferences, from what each platform bills for.

Default prices are list prices recorded on PRICES_RECORDED from the pages in each field's description
(AWS us-east-1; Google Cloud tier-1 regions; on-demand, no free tier, no discounts). Prices change:
override any of them in the targets file.

- Lambda bills each invocation's duration, rounded up to 1 ms, times its memory in GB, plus a request fee.
  Since 2025-08-01 the INIT phase of a cold start is billed too.
- Cloud Run functions (GCF 2nd gen) with request-based billing and one request per instance bill
  instance time, rounded up to 100 ms, per vCPU and per GiB, plus a request fee; startup is billed.
- A self-hosted node bills by the hour whether it serves or idles, so its cost per inference is the node
  price times the wall time of the run, idle included, divided by the inferences served.
- A self-hosted target that scales (Knative) with `replica_cpu` set is priced from the replica-seconds its
  `replicas:` block recorded instead: each replica costs its share of a node by CPU while it exists, so
  time at zero replicas costs nothing; `nodes` then counts nodes held whatever the load (0 by default).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRICES_RECORDED = "2026-11-28"
LAMBDA_SOURCE = "https://aws.amazon.com/lambda/pricing/ (us-east-1)"
CLOUD_RUN_SOURCE = "https://cloud.google.com/run/pricing (tier 1, request-based billing)"
EC2_SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/ (us-east-1, Linux)"
GCE_SOURCE = "https://cloud.google.com/compute/vm-instance-pricing (us-central1)"

LAMBDA_GB_SECOND_USD = {"x86_64": 0.0000166667, "arm64": 0.0000133334}

# On-demand $/hour of nodes a self-hosted ModelService runs on; the GPU ones for runtime.device: gpu.
NODE_PRESETS: dict[str, tuple[float, str]] = {
    "aws-c7i.xlarge": (0.1785, "4 vCPU, 8 GiB"),
    "aws-m7i.xlarge": (0.2016, "4 vCPU, 16 GiB"),
    "aws-g4dn.xlarge": (0.526, "4 vCPU, 16 GiB, 1x NVIDIA T4"),
    "aws-g5.xlarge": (1.006, "4 vCPU, 16 GiB, 1x NVIDIA A10G"),
    "gcp-n2-standard-4": (0.1942, "4 vCPU, 16 GiB"),
    "gcp-g2-standard-4": (0.7068, "4 vCPU, 16 GiB, 1x NVIDIA L4"),
}


class Invocation(BaseModel):
    """What one request cost the platform: its billed duration and any cold-start init time."""

    duration_s: float
    init_s: float = 0.0


class _Pricing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def request_cost(self, inv: Invocation) -> float:
        raise NotImplementedError

    def run_cost(self, invocations: list[Invocation], wall_s: float) -> float:
        return sum(self.request_cost(inv) for inv in invocations)

    def describe(self) -> str:
        raise NotImplementedError


class LambdaPricing(_Pricing):
    model: Literal["lambda"] = "lambda"
    memory_mb: int = Field(2048, ge=128, le=10240, description="The function's configured memory.")
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    gb_second_usd: float | None = Field(
        None,
        ge=0,
        description=f"Duration price; default by architecture from {LAMBDA_SOURCE} on {PRICES_RECORDED}.",
    )
    request_usd_per_million: float = Field(0.20, ge=0, description=f"{LAMBDA_SOURCE} on {PRICES_RECORDED}.")
    bill_init: bool = Field(
        True, description="Bill the INIT phase of cold starts, as AWS does since 2025-08."
    )

    def _gb_second(self) -> float:
        return (
            self.gb_second_usd if self.gb_second_usd is not None else LAMBDA_GB_SECOND_USD[self.architecture]
        )

    def request_cost(self, inv: Invocation) -> float:
        billed = inv.duration_s + (inv.init_s if self.bill_init else 0.0)
        billed_ms = math.ceil(round(billed * 1000, 6))
        return (
            billed_ms / 1000 * self.memory_mb / 1024 * self._gb_second() + self.request_usd_per_million / 1e6
        )

    def describe(self) -> str:
        return f"Lambda {self.memory_mb} MB {self.architecture}"


class CloudRunPricing(_Pricing):
    model: Literal["cloud-run"] = "cloud-run"
    vcpu: float = Field(1.0, gt=0)
    memory_gib: float = Field(2.0, gt=0)
    vcpu_second_usd: float = Field(0.000024, ge=0, description=f"{CLOUD_RUN_SOURCE} on {PRICES_RECORDED}.")
    gib_second_usd: float = Field(0.0000025, ge=0, description=f"{CLOUD_RUN_SOURCE} on {PRICES_RECORDED}.")
    request_usd_per_million: float = Field(
        0.40, ge=0, description=f"{CLOUD_RUN_SOURCE} on {PRICES_RECORDED}."
    )
    rounding_s: float = Field(0.1, gt=0, description="Billed instance time is rounded up to this.")

    def request_cost(self, inv: Invocation) -> float:
        billed = inv.duration_s + inv.init_s
        steps = math.ceil(round(billed / self.rounding_s, 6))
        seconds = steps * self.rounding_s
        per_second = self.vcpu * self.vcpu_second_usd + self.memory_gib * self.gib_second_usd
        return seconds * per_second + self.request_usd_per_million / 1e6

    def describe(self) -> str:
        return f"Cloud Run {self.vcpu:g} vCPU {self.memory_gib:g} GiB"


class NodePricing(_Pricing):
    model: Literal["node"] = "node"
    preset: str | None = Field(
        "aws-c7i.xlarge",
        description=f"A node type from NODE_PRESETS ({EC2_SOURCE}; {GCE_SOURCE}; on {PRICES_RECORDED}).",
    )
    hourly_usd: float | None = Field(None, ge=0, description="Price of one node per hour; overrides preset.")
    nodes: int | None = Field(
        None, ge=0, description="Nodes held for the whole run; default 1, or 0 with replica_cpu."
    )
    replica_cpu: float | None = Field(
        None,
        gt=0,
        description="CPUs of one replica (its resources.cpu): price the recorded replica-seconds, each "
        "replica its CPU share of the node, rather than the node for the whole run. Needs replicas:.",
    )

    @model_validator(mode="after")
    def _known_preset(self) -> NodePricing:
        if self.hourly_usd is None and self.preset not in NODE_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; known: {', '.join(NODE_PRESETS)}, or set hourly_usd"
            )
        if self.nodes == 0 and not self.replica_cpu:
            raise ValueError("nodes: 0 nodes would make the target free; set replica_cpu to price replicas")
        return self

    def hourly(self) -> float:
        return self.hourly_usd if self.hourly_usd is not None else NODE_PRESETS[str(self.preset)][0]

    def held_nodes(self) -> int:
        return self.nodes if self.nodes is not None else (0 if self.replica_cpu else 1)

    def node_cpu(self) -> float | None:
        """CPUs of the node, from the preset's description ("4 vCPU, ..."); None for a custom price."""
        if self.hourly_usd is not None or self.preset not in NODE_PRESETS:
            return None
        return float(NODE_PRESETS[str(self.preset)][1].split(" vCPU")[0])

    def request_cost(self, inv: Invocation) -> float:
        return 0.0

    def run_cost(self, invocations: list[Invocation], wall_s: float) -> float:
        return self.hourly() * self.held_nodes() * wall_s / 3600

    def replica_cost(self, replica_seconds: float, wall_s: float) -> float:
        """Replica-seconds at each replica's CPU share of a node (the whole node for a custom price),
        plus the nodes held for the whole run."""
        node_cpu = self.node_cpu()
        share = 1.0 if node_cpu is None else min(1.0, float(self.replica_cpu or node_cpu) / node_cpu)
        return self.hourly() * (replica_seconds * share + self.held_nodes() * wall_s) / 3600

    def describe(self) -> str:
        name = "custom node" if self.hourly_usd is not None else self.preset
        if self.replica_cpu:
            held = f" + {self.held_nodes()} held" if self.held_nodes() else ""
            return f"{self.replica_cpu:g}-CPU replica-seconds on {name} ${self.hourly():g}/h{held}"
        return f"{self.held_nodes()}x {name} ${self.hourly():g}/h"


Pricing = Annotated[LambdaPricing | CloudRunPricing | NodePricing, Field(discriminator="model")]


def cost_per_million(
    pricing: _Pricing, invocations: list[Invocation], successes: int, wall_s: float
) -> float | None:
    """Dollars per 1M successful inferences; failed requests are paid for too. None: nothing succeeded."""
    if successes == 0:
        return None
    return pricing.run_cost(invocations, wall_s) / successes * 1e6
