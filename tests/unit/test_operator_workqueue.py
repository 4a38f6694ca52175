"""The reconcile work queue: coalescing, one worker per key, backoff, resync, hot-loop guard.

Waits are on conditions with generous timeouts (a loaded 2-core CI machine), never on
fixed sleeps that assume a fast scheduler.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable

from dualpath_operator.workqueue import WorkQueue


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_events_for_one_key_coalesce_and_never_overlap():
    calls: list[Hashable] = []
    running: set[Hashable] = set()
    overlap = False
    first_a_started = asyncio.Event()

    async def worker(key: Hashable) -> None:
        nonlocal overlap
        overlap |= key in running
        running.add(key)
        calls.append(key)
        if key == "a":
            first_a_started.set()
        await asyncio.sleep(0.05)
        running.discard(key)

    q = WorkQueue(worker, concurrency=4)
    task = asyncio.create_task(q.run())
    for _ in range(10):
        q.add("a")
    q.add("b")
    await asyncio.wait_for(first_a_started.wait(), 10)
    q.add("a")  # arrives while "a" runs: one more run afterwards, not two
    q.add("a")
    await until(lambda: calls.count("a") == 2 and not running)
    await asyncio.wait_for(q.idle.wait(), 10)
    task.cancel()
    assert calls.count("a") == 2 and calls.count("b") == 1
    assert not overlap


async def test_failures_back_off_exponentially_and_success_resets():
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(key: Hashable) -> None:
        times.append(loop.time())
        if len(times) < 4:
            raise RuntimeError("API down")

    q = WorkQueue(worker, backoff_base=0.1, backoff_max=5.0)
    task = asyncio.create_task(q.run())
    q.add("k")
    await until(lambda: len(times) == 4)
    await asyncio.sleep(0.3)
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4  # success stops the retries
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4
    assert q._failures == {}


async def test_requeue_after_success_is_a_resync_and_forget_cancels_it():
    calls = 0

    async def worker(key: Hashable) -> float:
        nonlocal calls
        calls += 1
        return 0.05

    q = WorkQueue(worker)
    task = asyncio.create_task(q.run())
    q.add("k")
    await until(lambda: calls >= 3)
    q.forget("k")
    seen = calls
    await asyncio.sleep(0.3)
    task.cancel()
    assert calls <= seen + 1  # at most the run already in flight


async def test_hot_loop_guard_delays_a_key_that_keeps_coming_back():
    calls = 0

    async def worker(key: Hashable) -> None:
        nonlocal calls
        calls += 1
        q.add(key)  # a buggy reconcile that always triggers itself

    q = WorkQueue(worker, burst=5, window=60.0, throttle_delay=60.0)
    task = asyncio.create_task(q.run())
    q.add("k")
    await until(lambda: calls >= 5)
    await asyncio.sleep(0.2)
    task.cancel()
    assert calls == 5
