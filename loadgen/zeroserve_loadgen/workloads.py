"""Open-loop arrival processes: when requests are sent is decided by the workload alone, never by how fast
the target answers, so latency under overload is not understated (no coordinated omission).

Every workload is piecewise-constant in rate. `segments()` gives that rate profile, `rate_at()` reads it
and `arrivals()` draws Poisson (or evenly spaced) send times from it. All of it is a pure function of the
spec and its seed, so a run can be repeated and a distributed run can split one schedule between workers.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Segment = tuple[float, float, float]  # (start, end, rate per second)


class _Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(
        0, description="Seeds the arrival times (and the MMPP state path): same seed, same run."
    )
    arrival: Literal["poisson", "uniform"] = Field(
        "poisson", description="Exponential gaps (Poisson arrivals) or evenly spaced sends within a segment."
    )

    @property
    def duration(self) -> float:
        raise NotImplementedError

    def segments(self) -> list[Segment]:
        raise NotImplementedError

    def rate_at(self, t: float) -> float:
        for start, end, rate in self.segments():
            if start <= t < end:
                return rate
        return 0.0

    def mean_rate(self) -> float:
        return sum((end - start) * rate for start, end, rate in self.segments()) / self.duration

    def arrivals(self) -> np.ndarray:
        """Send times in seconds from the start of the run, sorted."""
        rng = np.random.default_rng([self.seed, 1])
        chunks = [
            _segment_arrivals(rng, start, end, rate, self.arrival) for start, end, rate in self.segments()
        ]
        return np.concatenate(chunks) if chunks else np.empty(0)


def _segment_arrivals(
    rng: np.random.Generator, start: float, end: float, rate: float, kind: str
) -> np.ndarray:
    if rate <= 0 or end <= start:
        return np.empty(0)
    if kind == "uniform":
        return start + np.arange(0, (end - start) * rate) / rate
    # Gaps are exponential and memoryless, so restarting the draw at each segment boundary is exact.
    expected = (end - start) * rate
    out: list[np.ndarray] = []
    t = start
    while t < end:
        gaps = rng.exponential(1 / rate, size=int(expected + 4 * np.sqrt(expected) + 16))
        times = t + np.cumsum(gaps)
        out.append(times[times < end])
        t = times[-1]
    return np.concatenate(out)


class Constant(_Workload):
    """A steady rate, the baseline the study compares bursty traffic against."""

    type: Literal["constant"] = "constant"
    rate: float = Field(gt=0, description="Requests per second.")
    duration_s: float = Field(gt=0, description="Length of the run in seconds.")

    @property
    def duration(self) -> float:
        return self.duration_s

    def segments(self) -> list[Segment]:
        return [(0.0, self.duration_s, self.rate)]


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = Field(ge=0, description="Requests per second during this step; 0 is an idle gap.")
    duration_s: float = Field(gt=0)


class Steps(_Workload):
    """Rates held for given durations, one after the other: ramps, plateaus and idle gaps."""

    type: Literal["step"] = "step"
    steps: list[Step] = Field(min_length=1)

    @property
    def duration(self) -> float:
        return sum(s.duration_s for s in self.steps)

    def segments(self) -> list[Segment]:
        out, t = [], 0.0
        for s in self.steps:
            out.append((t, t + s.duration_s, s.rate))
            t += s.duration_s
        return out


class MMPP(_Workload):
    """Two-state Markov-modulated Poisson process, the study's bursty traffic: the process stays in each
    state for an exponentially distributed time with the given mean, sending Poisson arrivals at that
    state's rate, then switches to the other state."""

    type: Literal["mmpp"] = "mmpp"
    rates: tuple[float, float] = Field(description="Arrival rate (req/s) in the calm and the burst state.")
    mean_sojourn_s: tuple[float, float] = Field(description="Mean time spent in each state per visit.")
    duration_s: float = Field(gt=0)
    initial_state: Literal[0, 1] = 0

    @model_validator(mode="after")
    def _positive(self) -> MMPP:
        if min(self.rates) < 0:
            raise ValueError("rates must be >= 0")
        if min(self.mean_sojourn_s) <= 0:
            raise ValueError("mean_sojourn_s must be > 0")
        return self

    @property
    def duration(self) -> float:
        return self.duration_s

    def stationary(self) -> tuple[float, float]:
        """Long-run fraction of time in each state."""
        s0, s1 = self.mean_sojourn_s
        return s0 / (s0 + s1), s1 / (s0 + s1)

    def theoretical_mean_rate(self) -> float:
        p0, p1 = self.stationary()
        return p0 * self.rates[0] + p1 * self.rates[1]

    def states(self) -> list[tuple[float, float, int]]:
        """The realized state path: (start, end, state), from its own seeded stream."""
        rng = np.random.default_rng([self.seed, 0])
        out, t, state = [], 0.0, self.initial_state
        while t < self.duration_s:
            end = min(t + rng.exponential(self.mean_sojourn_s[state]), self.duration_s)
            out.append((t, end, state))
            t, state = end, 1 - state
        return out

    def segments(self) -> list[Segment]:
        return [(start, end, self.rates[state]) for start, end, state in self.states()]


class Sporadic(_Workload):
    """Short bursts separated by idle gaps longer than the scale-to-zero window, so every burst starts
    cold: the case where serverless either shines (no idle cost) or hurts (cold starts)."""

    type: Literal["sporadic"] = "sporadic"
    bursts: int = Field(ge=1, description="Number of bursts.")
    burst_rate: float = Field(gt=0, description="Requests per second within a burst.")
    burst_s: float = Field(gt=0, description="Length of each burst.")
    idle_s: float = Field(
        gt=0, description="Idle gap before each burst; make it longer than the targets' idle_window_s."
    )

    @property
    def duration(self) -> float:
        return self.bursts * (self.idle_s + self.burst_s)

    def segments(self) -> list[Segment]:
        out, t = [], 0.0
        for _ in range(self.bursts):
            out.append((t, t + self.idle_s, 0.0))
            out.append((t + self.idle_s, t + self.idle_s + self.burst_s, self.burst_rate))
            t += self.idle_s + self.burst_s
        return out


Workload = Annotated[Constant | Steps | MMPP | Sporadic, Field(discriminator="type")]
