"""Child processes that do not outlive their parent."""

from __future__ import annotations

import signal
from collections.abc import Callable


def dies_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A Popen `preexec_fn`: the kernel sends the child `sig` when its parent dies, however it dies
    (even SIGKILL, which runs no cleanup). Linux's PR_SET_PDEATHSIG; elsewhere it does nothing."""

    def preexec() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return preexec
