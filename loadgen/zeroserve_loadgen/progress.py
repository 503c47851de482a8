"""Progress on the terminal while a run is going: a live bar on a TTY, a line every few seconds in logs."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from zeroserve_loadgen.plan import RunPlan


class RunProgress:
    def __init__(self, plan: RunPlan, planned: int, console: Console) -> None:
        self.plan, self.planned, self.console = plan, planned, console
        self.names = [t.name for t in plan.targets]
        self.duration = plan.total_duration()
        self._last_line = 0.0
        # Counted incrementally: the row list only grows, and a fast run has hundreds of thousands.
        self._seen = 0
        self._sent = [0] * len(self.names)
        self._ok = [0] * len(self.names)
        self._bar: Progress | None = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=console,
                auto_refresh=False,
                transient=False,
            )
            self._task = self._bar.add_task("bench", total=self.duration, detail="")

    def __enter__(self) -> RunProgress:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._bar.stop()

    def detail(self, rows: list[Any]) -> str:
        sent, ok = self._sent, self._ok
        for row in rows[self._seen :]:
            sent[row[0]] += 1
            ok[row[0]] += bool(row[5])
        self._seen = len(rows)
        parts = [f"{n} {o}/{s} ok" for n, s, o in zip(self.names, sent, ok, strict=True)]
        return f"{len(rows)}/{self.planned} requests | " + ", ".join(parts)

    def __call__(self, rows: list[Any], elapsed: float) -> None:
        elapsed = min(max(elapsed, 0.0), self.duration)
        if self._bar:
            self._bar.update(self._task, completed=elapsed, detail=self.detail(rows))
            self._bar.refresh()
        elif time.monotonic() - self._last_line >= 5 or len(rows) >= self.planned:
            self._last_line = time.monotonic()
            self.console.print(
                f"bench {elapsed:5.1f}/{self.duration:.0f} s  {self.detail(rows)}", highlight=False
            )
