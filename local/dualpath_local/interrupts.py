"""Process-level plumbing of the local demos: Ctrl-C and SIGTERM as KeyboardInterrupt,
a teardown they cannot interrupt, and the demo's JSON log in a file (the terminal belongs
to the live display)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from dualpath_common.logs import JsonFormatter


def log_to_file(path: Path) -> None:
    """The demo's own JSON log goes to a file: the terminal belongs to the live display."""
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("demo"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("DUALPATH_LOG_LEVEL", "INFO").upper())


@contextlib.contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM stop the demo the way Ctrl-C does (teardown runs, processes
    stopped). SIGINT is installed explicitly: a shell that starts a command in the
    background hands it SIGINT ignored, and Python keeps an inherited SIG_IGN, so a
    `kill -INT` to the demo would otherwise do nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Teardown is not interruptible: a second Ctrl-C must not leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda signum, frame: None)
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
