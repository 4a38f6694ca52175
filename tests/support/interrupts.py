"""Stop cleanly on SIGINT and SIGTERM: the local control plane (localkube) and the local
cluster (localcluster) start children in their own sessions, which only this process can
stop, so a stop signal must reach its `finally` blocks wherever it was started."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import FrameType
from typing import TypeVar

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # Ignore further stop signals: a second Ctrl-C must not cut the cleanup short.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `finally` blocks stop the children.
    Python's own SIGINT handler is not installed when SIGINT was ignored at start (a
    background job of a non-interactive shell) and SIGTERM kills without cleanup by
    default; both are replaced here. Only where signals can be handled (the main thread);
    the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_stopped(stack: AbstractContextManager[T], announce: Callable[[T], None]) -> int:
    """A script's main: start `stack`, `announce` it (what a shell evaluates to use it), and
    keep it up until SIGINT or SIGTERM stops it; the exit status."""
    try:
        with stack as started:
            announce(started)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
