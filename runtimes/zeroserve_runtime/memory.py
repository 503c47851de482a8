"""Giving memory back after a burst of large requests.

A 60 MB body is one mmap that goes back to the kernel when freed, but the many small blocks around it
(body chunks, protobuf and JSON objects, numpy temporaries) land in malloc's arenas, which keep their
free space; after a burst the process stayed at 1.8 GB. malloc_trim(0) returns the free pages of every
arena. onnxruntime's own arena is shrunk at the end of large runs (OnnxModel.run).
"""

from __future__ import annotations

import asyncio
import ctypes

# Requests this large are worth a trim once they are gone; small ones leave little, and trimming after
# each would cost a system call per request.
TRIM_AFTER_BYTES = 16 << 20


def _malloc_trim():  # type: ignore[no-untyped-def]
    # The process's own symbols include the C library's; ctypes.util.find_library would run ldconfig.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class Trimmer:
    def __init__(self) -> None:
        self._trim = None
        self._looked = False
        self._running: asyncio.Future[object] | None = None

    def trim(self) -> None:
        """Trim in a worker thread (ctypes lets go of the GIL, and a trim of gigabytes takes
        milliseconds), once at a time."""
        if not self._looked:  # looked up on first use, not in every cold start
            self._trim, self._looked = _malloc_trim(), True
        if self._trim is None or (self._running is not None and not self._running.done()):
            return
        self._running = asyncio.get_running_loop().run_in_executor(None, self._trim, 0)


# What a request holds per byte of its body, measured: a binary body is held once (its tensors are views
# of it); a JSON one is also parsed into Python numbers and then an array, 3.4x its size at the peak.
BINARY_COST = 1
JSON_COST = 5


def memory_cost(body_bytes: int, binary: bool) -> int:
    """The bytes a request counts against the in-flight budget."""
    return body_bytes * (BINARY_COST if binary else JSON_COST)
