"""A per-key work queue for reconciles, like client-go's: a key waits in the queue at most
once however many events arrive for it (coalescing), one worker at a time handles a key,
a key re-added while it is being handled runs once more afterwards, failures retry with
exponential backoff, and successes may ask to run again later (periodic resync).

A hot-loop guard delays a key reconciled more than `burst` times within `window` seconds:
a bug that makes every reconcile trigger the next costs a little latency, not the API
server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from dualpath_operator import metrics

log = logging.getLogger("dualpath.operator.workqueue")

Worker = Callable[[Hashable], Awaitable[float | None]]


class WorkQueue:
    def __init__(
        self,
        worker: Worker,
        concurrency: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        burst: int = 50,
        window: float = 10.0,
        throttle_delay: float = 5.0,
    ) -> None:
        self._worker = worker
        self._concurrency = concurrency
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._burst = burst
        self._window = window
        self._throttle_delay = throttle_delay
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[Hashable, int] = {}
        self._recent: dict[Hashable, deque[float]] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def __len__(self) -> int:
        return len(self._dirty)

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Queue `key` now, or after `delay` seconds (an earlier pending add wins)."""
        if delay > 0:
            self._add_later(key, delay)
            return
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()
        if key in self._dirty:
            return
        self._dirty.add(key)
        self.idle.clear()
        metrics.QUEUE_DEPTH.set(len(self._dirty))
        if key not in self._processing:
            self._queue.put_nowait(key)

    def _add_later(self, key: Hashable, delay: float) -> None:
        if key in self._dirty:
            return  # a run is already due, and it will see whatever prompted this add
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._timers.get(key)
        if pending and pending[0] <= due:
            return
        if pending:
            pending[1].cancel()
        handle = loop.call_at(due, self._fire, key)
        self._timers[key] = (due, handle)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        """Drop retries, resyncs and history of a key (its object is gone)."""
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()
        self._failures.pop(key, None)
        self._recent.pop(key, None)

    def _throttled(self, key: Hashable) -> bool:
        now = time.monotonic()
        recent = self._recent.setdefault(key, deque())
        while recent and now - recent[0] > self._window:
            recent.popleft()
        if len(recent) >= self._burst:
            return True
        recent.append(now)
        return False

    async def _run_worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            metrics.QUEUE_DEPTH.set(len(self._dirty))
            if self._throttled(key):
                metrics.THROTTLED.inc()
                log.warning("reconciling too often; delaying", extra={"key": str(key)})
                self.add(key, self._throttle_delay)
                self._update_idle()
                continue
            self._processing.add(key)
            try:
                again = await self._worker(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._backoff_base * 2 ** (failures - 1), self._backoff_max)
                log.warning(
                    "reconcile failed; retrying",
                    extra={"key": str(key), "error": str(exc), "retry_in_s": delay},
                )
                self.add(key, delay)
            else:
                self._failures.pop(key, None)
                if again:
                    self.add(key, again)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)
                self._update_idle()

    def _update_idle(self) -> None:
        if not self._dirty and not self._processing:
            self.idle.set()

    async def run(self) -> None:
        """Run the workers until cancelled."""
        workers = [asyncio.create_task(self._run_worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for _, handle in self._timers.values():
                handle.cancel()
