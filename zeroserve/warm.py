"""The adaptive warm policy (#24): learn a model's idle times and keep a replica warm only when the next
request is likely, as the hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC
2020), does for Azure Functions.

After every burst the policy has an idle spell to wait out. It keeps a histogram of past idle spells (the
time from a burst's last answer to the next burst's first request) and, when the histogram says something,
holds one replica from a little before the head of the distribution (its 5th percentile, less a margin and
less the model's cold start) to a little after its tail (its 99th percentile, plus a margin, up to a
ceiling). When it says nothing (too few spells, most of them beyond its range, or spread so evenly that no
bin stands out: the coefficient of variation of the bin counts below a threshold; or spread from short to
long, so that the window would span nearly all of them) it keeps nothing and the platform's own scale to
zero decides, as without the policy.

Pure Python, no third-party import: the operator (which decides for real Knative) and `zeroserve advise`
(which simulates it) run this same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["learning", "histogram", "fixed"]


@dataclass(frozen=True)
class WarmParams:
    """The policy's knobs, with the paper's defaults at real time scale (seconds)."""

    bin_s: float = 60.0  # histogram bin width: idle spells shorter than this are not spells
    range_s: float = 4 * 3600.0  # idle spells up to this are binned; longer ones are counted apart
    head_percentile: float = 5.0  # pre-warm for the spells from here ...
    tail_percentile: float = 99.0  # ... and keep warm up to here
    margin: float = 0.10  # the head taken this much earlier, the tail this much later
    min_samples: int = 10  # fewer idle spells: still learning, nothing kept
    cv_threshold: float = 2.0  # bin counts spread more evenly than this: no pattern, nothing kept
    max_out_of_range: float = 0.5  # more spells than this share beyond range_s: nothing kept
    max_keep_alive_s: float = 3600.0  # never hold a replica longer than this into an idle spell
    # The window from head to tail wider than this share of the tail: the spells are spread from short to
    # long (Poisson arrivals' exponential gaps), there is no time to pre-warm at, and holding a replica
    # through all of them is a plain keep-alive, which is not this policy's to decide.
    max_window_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.bin_s <= self.range_s:
            raise ValueError("bin_s must be positive and at most range_s")
        if not 0 <= self.head_percentile < self.tail_percentile <= 100:
            raise ValueError("head_percentile must be below tail_percentile, both within 0-100")
        if not 0 <= self.margin < 1:
            raise ValueError("margin must be within [0, 1)")
        if not 0 < self.max_window_share <= 1:
            raise ValueError("max_window_share must be within (0, 1]")

    @property
    def bins(self) -> int:
        return math.ceil(self.range_s / self.bin_s - 1e-9)


@dataclass
class IdleHistogram:
    """Idle spells in bins of bin_s up to range_s, and a count of the longer ones. A few hundred small
    integers: about 1 KB as JSON for the paper's 240 bins, kept with the ModelService."""

    bin_s: float
    counts: list[int]
    out_of_range: int = 0

    @classmethod
    def empty(cls, params: WarmParams) -> IdleHistogram:
        return cls(params.bin_s, [0] * params.bins)

    @property
    def samples(self) -> int:
        return sum(self.counts) + self.out_of_range

    def add(self, idle_s: float) -> None:
        k = int(idle_s // self.bin_s)
        if k < len(self.counts):
            self.counts[k] += 1
        else:
            self.out_of_range += 1

    def cv(self) -> float:
        """Coefficient of variation of the bin probabilities the counts estimate: high when a few bins hold
        the spells. Over B bins it is sqrt(B x sum(p^2) - 1); sum(p^2) is estimated without the sampling
        noise that inflates the raw counts' CV while they are few (ten spells in 240 bins look like a
        pattern whatever they are), as the chance that two spells fall in one bin:
        sum(c (c - 1)) / (n (n - 1))."""
        n = sum(self.counts)
        if n < 2:
            return 0.0
        same_bin = sum(c * (c - 1) for c in self.counts) / (n * (n - 1))
        return math.sqrt(max(0.0, len(self.counts) * same_bin - 1))

    def percentile(self, p: float, upper: bool) -> float:
        """The bin edge at the p-th percentile of the binned spells: the bin's lower edge for a head (to
        be early), its upper edge for a tail (to be late)."""
        total = sum(self.counts)
        rank = p / 100 * total
        seen = 0
        for k, c in enumerate(self.counts):
            seen += c
            if c and seen >= rank:
                return (k + 1 if upper else k) * self.bin_s
        return len(self.counts) * self.bin_s

    def to_compact(self) -> dict[str, object]:
        """For the ModelService's status: the non-empty bins only."""
        return {
            "binSeconds": self.bin_s,
            "bins": {str(k): c for k, c in enumerate(self.counts) if c},
            "outOfRange": self.out_of_range,
        }

    @classmethod
    def from_compact(cls, data: dict[str, object], params: WarmParams) -> IdleHistogram:
        """The histogram kept in a status, or an empty one when its bins no longer fit `params` (a spec
        change of the bin width starts the learning anew rather than misreading old counts)."""
        hist = cls.empty(params)
        if data.get("binSeconds") != params.bin_s:
            return hist
        bins = data.get("bins") or {}
        assert isinstance(bins, dict)
        for k, c in bins.items():
            if 0 <= int(k) < len(hist.counts):
                hist.counts[int(k)] = int(c)
        hist.out_of_range = int(data.get("outOfRange") or 0)  # type: ignore[call-overload]
        return hist


@dataclass(frozen=True)
class Decision:
    """What the policy does with the next idle spell, in seconds from the burst's last answer: hold one
    replica from warm_from_s to warm_until_s (nothing when they are equal)."""

    mode: Mode
    warm_from_s: float = 0.0
    warm_until_s: float = 0.0
    why: str = ""

    @property
    def keeps(self) -> bool:
        return self.warm_until_s > self.warm_from_s


def decide(hist: IdleHistogram, params: WarmParams, cold_start_s: float) -> Decision:
    """The window to hold a replica in, from the histogram. `cold_start_s` is how long a replica takes to
    serve from nothing: the pre-warm starts that much before the head."""
    n = hist.samples
    if n < params.min_samples:
        return Decision("learning", why=f"{n} of {params.min_samples} idle spells seen")
    if hist.out_of_range > params.max_out_of_range * n:
        return Decision("fixed", why=f"{hist.out_of_range} of {n} idle spells beyond {params.range_s:g} s")
    cv = hist.cv()
    if cv < params.cv_threshold:
        return Decision("fixed", why=f"no pattern: bin counts' CV {cv:.2f} < {params.cv_threshold:g}")
    head = hist.percentile(params.head_percentile, upper=False) * (1 - params.margin)
    tail = hist.percentile(params.tail_percentile, upper=True) * (1 + params.margin)
    if tail - head > params.max_window_share * tail:
        return Decision("fixed", why=f"no time to pre-warm at: idle spells spread over {head:g}-{tail:g} s")
    tail = min(tail, params.max_keep_alive_s)
    start = max(0.0, head - cold_start_s)
    return Decision(
        "histogram",
        start,
        max(start, tail),
        f"idle spells {head:g}-{tail:g} s (p{params.head_percentile:g}-p{params.tail_percentile:g}, "
        f"{n} seen, CV {cv:.2f})",
    )


@dataclass
class WarmPolicy:
    """One ModelService's policy state: the histogram, when the last burst's last answer came, and the
    decision for the spell that follows it."""

    params: WarmParams
    cold_start_s: float
    hist: IdleHistogram = field(init=False)
    busy_until: float = -math.inf  # the last answer so far
    decision: Decision = field(init=False)

    def __post_init__(self) -> None:
        self.hist = IdleHistogram.empty(self.params)
        self.decision = decide(self.hist, self.params, self.cold_start_s)

    def request(self, arrived: float, answered: float) -> None:
        """A request that arrived at `arrived` and was answered at `answered`: if it ends an idle spell,
        the spell is learnt."""
        if math.isfinite(self.busy_until) and arrived - self.busy_until >= self.params.bin_s:
            self.hist.add(arrived - self.busy_until)
            self.decision = decide(self.hist, self.params, self.cold_start_s)
        self.busy_until = max(self.busy_until, answered)

    def warm(self, now: float) -> int:
        """Replicas to hold now (0 or 1) for the idle spell under way; none while requests are in flight,
        when the platform's own scaling holds what they need."""
        if now < self.busy_until or not self.decision.keeps:
            return 0
        idle = now - self.busy_until
        return 1 if self.decision.warm_from_s <= idle < self.decision.warm_until_s else 0
