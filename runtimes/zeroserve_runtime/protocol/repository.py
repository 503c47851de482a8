"""The model repository extension (read-only): the index of what a server holds, as both transports
report it. Every Zeroserve surface holds exactly one model, fixed when it starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Triton's names for a model's states, which its clients show as they are.
ModelState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


@dataclass(frozen=True)
class ModelIndex:
    name: str
    version: str
    state: ModelState
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        # As Triton writes it: no "reason" key unless there is one.
        out = {"name": self.name, "version": self.version, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out
