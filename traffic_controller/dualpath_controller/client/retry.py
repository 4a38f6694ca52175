"""The one retry policy of the client, in sync and async forms: Schedule is idempotent, so
RESOURCE_EXHAUSTED (no capacity now) and UNAVAILABLE (controller restarting) are retried
with exponential backoff within a wait budget, and a request is delayed, never dropped.
Complete/Cancel are repeatable: NOT_FOUND may be accepted as "already released"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

R = TypeVar("R")
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
FIRST_BACKOFF_S = 0.01
MAX_BACKOFF_S = 0.5


class Backoff:
    """Delays between tries of one call, doubling up to MAX_BACKOFF_S, within a budget."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.delay = FIRST_BACKOFF_S

    def after(self, exc: grpc.RpcError) -> float:
        """The delay before the next try; raises `exc` when it is not retryable or the next
        try would start past the budget."""
        if exc.code() not in RETRYABLE or time.monotonic() + self.delay > self.deadline:
            raise exc
        delay, self.delay = self.delay, min(self.delay * 2, MAX_BACKOFF_S)
        return delay


def retry_while_busy(call: Callable[[], R], wait_for_capacity_s: float) -> R:
    """Run an idempotent call; on RESOURCE_EXHAUSTED / UNAVAILABLE retry with backoff for up
    to `wait_for_capacity_s` seconds, then raise the last error."""
    backoff = Backoff(wait_for_capacity_s)
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            delay = backoff.after(exc)
        time.sleep(delay)


async def retry_while_busy_async(call: Callable[[], Awaitable[R]], wait_for_capacity_s: float) -> R:
    """retry_while_busy for coroutines (`call` makes a fresh awaitable per try)."""
    backoff = Backoff(wait_for_capacity_s)
    while True:
        try:
            return await call()
        except grpc.RpcError as exc:
            delay = backoff.after(exc)
        await asyncio.sleep(delay)


def _missing(exc: grpc.RpcError, missing_ok: bool) -> bool:
    """False for an accepted NOT_FOUND; raises `exc` otherwise."""
    if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
        return False
    raise exc


def finish_or_missing(call: Callable[[], object], missing_ok: bool) -> bool:
    """Complete/Cancel: True when released; with missing_ok, NOT_FOUND (e.g. after a
    controller restart) returns False instead of raising."""
    try:
        call()
    except grpc.RpcError as exc:
        return _missing(exc, missing_ok)
    return True


async def finish_or_missing_async(call: Awaitable[object], missing_ok: bool) -> bool:
    """finish_or_missing for an awaitable."""
    try:
        await call
    except grpc.RpcError as exc:
        return _missing(exc, missing_ok)
    return True
