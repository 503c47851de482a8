"""What a run sends and when: the same arrivals for every target, merged into one schedule that any number
of workers can split without talking to each other."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zeroserve_loadgen.targets import Target
from zeroserve_loadgen.workloads import Workload

Mode = Literal["interleaved", "sequential"]


class RunPlan(BaseModel):
    """Everything a worker needs, sent to it by the master; plain data so it crosses msgpack."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: list[Target]
    payload: dict[str, Any]
    workload: Workload
    mode: Mode = "interleaved"
    gap_s: float = Field(0.0, ge=0, description="Pause between targets in sequential mode.")
    max_in_flight: int = Field(1000, ge=1, description="Requests in flight per worker before sends queue up.")

    def windows(self) -> list[tuple[float, float]]:
        """Each target's (start, end) in seconds from the start of the run."""
        d = self.workload.duration
        if self.mode == "interleaved":
            return [(0.0, d)] * len(self.targets)
        return [(k * (d + self.gap_s), k * (d + self.gap_s) + d) for k in range(len(self.targets))]

    def total_duration(self) -> float:
        return max(end for _, end in self.windows())


class Schedule(NamedTuple):
    times: np.ndarray  # seconds from the start of the run, sorted
    targets: np.ndarray  # index into RunPlan.targets

    def slice(self, index: int, count: int) -> Schedule:
        """This worker's share: every count-th arrival of each target, so every worker sends to every
        target (taking every count-th of the merged list would tie workers to targets)."""
        if count == 1:
            return self
        picked = np.concatenate(
            [np.flatnonzero(self.targets == k)[index::count] for k in np.unique(self.targets)]
        )
        picked.sort()
        return Schedule(self.times[picked], self.targets[picked])


def schedule(plan: RunPlan) -> Schedule:
    """Every target gets the identical arrival sequence (same seed): a fair comparison. Interleaved runs
    them side by side in one window; sequential runs one window after another."""
    arrivals = plan.workload.arrivals()
    times = np.concatenate([arrivals + start for start, _ in plan.windows()])
    targets = np.repeat(np.arange(len(plan.targets)), len(arrivals))
    order = np.argsort(times, kind="stable")
    return Schedule(times[order], targets[order])


class Sample(NamedTuple):
    """One request as the report sees it. Times are seconds from the start of the run."""

    target: int
    scheduled_s: float
    sent_s: float
    latency_s: float
    status: int
    ok: bool
    cold: bool  # the target's cold-start header: the first answer of a fresh process
    server_s: float
    init_s: float
    ready_age_s: float
    error: str
    replica: str = ""  # which replica answered, where the target said (its pod's name on Knative)
    revision: str = ""  # which revision answered, where the target said
