"""Cold start, the part of serverless latency Knative does not measure: process start to ready.

The model is fetched, loaded and warmed up in a thread of its own, started before the server's own
modules are imported, so loading the model and importing the web stack overlap. Phases are timed from
the moment the kernel started this process. This module imports nothing heavy on purpose.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zeroserve_runtime.model import OnnxModel
    from zeroserve_runtime.settings import RuntimeSettings
    from zeroserve_runtime.storage import Fetched


def process_start_time() -> float:
    """Wall-clock time at which this process started (Linux), to the kernel's 10 ms clock tick.

    The start is counted in ticks since boot. It is turned into an age against CLOCK_BOOTTIME, the
    clock it is kept on, not added to /proc/stat's btime: btime is whole seconds, which would put every
    figure off by up to a second.
    """
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


class ModelLoader(threading.Thread):
    """Fetch, load and warm up the model in the background; `wait()` hands over the model or the error."""

    def __init__(self, settings: RuntimeSettings, started_at: float) -> None:
        super().__init__(name="model-loader", daemon=True)
        self.settings = settings
        self.started_at = started_at
        self.marks: dict[str, float] = {}
        self.fetched: Fetched | None = None
        self.model: OnnxModel | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            begun = time.time()
            from zeroserve_runtime.model import load_model

            marks = {"runtime_import": time.time() - begun}
            self.model = load_model(self.settings, marks, self._on_fetched)
            self.marks = marks
        except BaseException as e:  # handed to the main thread, which decides how to fail
            self.error = e

    def _on_fetched(self, fetched: Fetched) -> None:
        self.fetched = fetched

    def wait(self) -> OnnxModel:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.model is not None
        return self.model

    def phases(self, imported_at: float, ready_at: float) -> dict[str, Any]:
        """Seconds per phase. Model phases run beside the server's imports, so they may overlap."""
        return {
            "import": imported_at - self.started_at,
            "fetch": self.marks["fetch"],
            "load": self.marks["load"],
            "warmup": self.marks["warmup"],
            "total": ready_at - self.started_at,
        }
