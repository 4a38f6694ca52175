"""The one polling helper of tests, the local cluster harness and benches, and the one
`free_port` (production's, re-exported so tests import both from here).

`wait_for` polls a probe until it returns something truthy and returns that value. Which
exceptions mean "not yet" is the caller's choice (`retry_on`, by default any but an
AssertionError: probes fail in many ways while a component comes up, and the last such
error is in the timeout message); any other exception propagates at once, as does an
AssertionError (the probe saw a definite failure). `alive` is called before each poll and
raises when something the wait depends on has died, so a crashed process fails the wait at
once instead of at the timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from dualpath_common.net import free_port

__all__ = ["WaitTimeout", "free_port", "retry_any", "wait_for"]

T = TypeVar("T")

RetryOn = tuple[type[Exception], ...] | Callable[[Exception], bool]


class WaitTimeout(AssertionError):
    """The condition did not hold in time. An AssertionError so pytest reports it as a
    failed check, with what was awaited and the last error seen."""


def retry_any(exc: Exception) -> bool:
    """`retry_on` for probes that fail in many ways while a component comes up (a refused
    connection, an API 404, a half-written file)."""
    return not isinstance(exc, AssertionError)


def _retryable(exc: Exception, retry_on: RetryOn) -> bool:
    if isinstance(exc, AssertionError):
        return False
    if isinstance(retry_on, tuple):
        return isinstance(exc, retry_on)
    return retry_on(exc)


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 10.0,
    alive: Callable[[], None] | None = None,
    *,
    interval: float = 0.1,
    retry_on: RetryOn = retry_any,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` every `interval` seconds until it returns a truthy value (returned).
    On timeout raise WaitTimeout naming `what`, the last retried error and `explain()`
    (e.g. pod states and events)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        if alive is not None:
            alive()
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:
            if not _retryable(exc, retry_on):
                if isinstance(exc, AssertionError) and explain is not None:
                    raise AssertionError(f"{what}: {exc}\n{explain()}") from exc
                raise
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            detail = explain() if explain else ""
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
                + (f"\n{detail}" if detail else "")
            )
        time.sleep(interval)
