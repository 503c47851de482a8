"""Polling for state that a controller reaches eventually."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, within: float, interval: float = 0.25, what: str
) -> T:
    """Await `probe` until it returns a truthy value; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last saw {last!r}")
        await asyncio.sleep(interval)
