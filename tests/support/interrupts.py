"""Stop cleanly on SIGINT and SIGTERM: the local control plane (localkube) and the local
cluster (localcluster) start children in their own sessions, which only this process can
stop, so a stop signal must reach its `finally` blocks wherever it was started."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
