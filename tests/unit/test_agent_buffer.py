"""Memory tiers (allocator, pools), the SNIC token bucket and the read queue."""

from __future__ import annotations

import threading
import time

import pytest
from dualpath_agent.buffer import Arena, Cancelled, DeviceBuffer, HostBuffer, OutOfBuffer
from dualpath_agent.layout import PAGE
from dualpath_agent.snic import ReadQueue, TokenBucket


def test_arena_first_fit_alignment_and_merge():
    arena = Arena(16 * PAGE)
    a = arena.try_alloc(1)
    b = arena.try_alloc(PAGE + 1)
    c = arena.try_alloc(PAGE)
    assert (a, b, c) == (0, PAGE, 3 * PAGE)
    assert arena.used_bytes == 4 * PAGE
    arena.free(b)
    assert arena.try_alloc(3 * PAGE) == 4 * PAGE  # the 2-page hole is too small
    assert arena.try_alloc(2 * PAGE) == PAGE  # first fit reuses it
    for off in (0, PAGE, 3 * PAGE, 4 * PAGE):
        arena.free(off)
    assert arena.free_bytes == 16 * PAGE and arena.largest_free == 16 * PAGE
    assert arena.try_alloc(17 * PAGE) is None


def test_region_context_manager_frees_on_error():
    pool = HostBuffer(8 * PAGE, lock_pages=False).pool("host")
    with pytest.raises(RuntimeError), pool.allocate(5 * PAGE) as region:
        region.view()[:5] = b"hello"
        assert pool.free_bytes == 3 * PAGE
        raise RuntimeError("transfer failed")
    assert pool.free_bytes == 8 * PAGE
    region.release()  # idempotent
    assert pool.free_bytes == 8 * PAGE


def test_allocation_waits_for_space_then_times_out():
    pool = HostBuffer(4 * PAGE, lock_pages=False).pool("host")
    first = pool.allocate(3 * PAGE)
    got: list[int] = []

    def waiter() -> None:
        with pool.allocate(2 * PAGE, timeout_s=5) as r:
            got.append(r.offset)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    assert not got and pool.waiters == 1
    first.release()
    t.join(5)
    assert got == [0]
    with pytest.raises(OutOfBuffer, match="whole buffer"):
        pool.allocate(5 * PAGE)
    held = pool.allocate(4 * PAGE)
    with pytest.raises(OutOfBuffer, match="within"):
        pool.allocate(PAGE, timeout_s=0.1)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        pool.allocate(PAGE, timeout_s=5, cancelled=cancel)
    held.release()
    assert pool.free_bytes == 4 * PAGE and pool.waiters == 0


def test_allocation_is_fifo():
    pool = HostBuffer(4 * PAGE, lock_pages=False).pool("host")
    blocker = pool.allocate(4 * PAGE)
    order: list[str] = []

    def take(name: str, pages: int) -> None:
        with pool.allocate(pages * PAGE, timeout_s=5):
            order.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=take, args=("big", 4))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=take, args=("small", 1))
    small.start()
    time.sleep(0.05)
    blocker.release()
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]  # the small request does not starve the big one


def test_host_buffer_is_page_aligned_and_device_tier_falls_back_to_dram():
    host = HostBuffer(3 * PAGE + 1, lock_pages=False)
    assert host.address % PAGE == 0 and host.size == 4 * PAGE
    device = DeviceBuffer(2 * PAGE, mode="dram")
    assert device.mem_type == "DRAM" and device.info.library == "none"
    pool = device.pool("device")
    src = HostBuffer(PAGE, lock_pages=False)
    src.view(0, 5)[:] = b"bytes"
    device.copy_in(pool.base_address + 10, src.address, 5)
    assert bytes(pool.host_view(10, 5)) == b"bytes"


def test_token_bucket_paces_to_the_rate():
    bucket = TokenBucket(bytes_per_s=1_000_000)
    waits = [bucket.reserve(100_000, now=10.0) for _ in range(5)]
    # 100 kB at 1 MB/s = 0.1 s each, one after the other: done at 0.1, 0.2, ... 0.5 s
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5], abs=1e-6)
    # after an idle gap the link is free again (no credit saved up while idle)
    assert bucket.slot(100_000, now=100.0) == pytest.approx((100.0, 100.1))
    assert TokenBucket(0).reserve(10**9) == 0.0


def test_token_bucket_rate_in_real_time():
    bucket = TokenBucket(bytes_per_s=20_000_000)
    start = time.monotonic()
    for _ in range(10):
        bucket.acquire(1_000_000)
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed <= 1.5  # 10 MB at 20 MB/s = 0.5 s


def test_token_bucket_acquire_can_be_cancelled():
    bucket = TokenBucket(bytes_per_s=1000)
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    with pytest.raises(Cancelled):
        bucket.acquire(10_000, cancel)


def test_read_queue_tracks_length_bytes_tokens_and_inflight():
    q = ReadQueue()
    with q.job(1000, total_tokens=10) as job:
        snap = q.snapshot()
        assert (snap.length, snap.bytes_pending, snap.tokens_pending) == (1, 1000, 10)
        with job.chunk(400):
            assert q.snapshot().inflight_bytes == 400
        snap = q.snapshot()
        assert (snap.bytes_pending, snap.tokens_pending, snap.inflight_bytes) == (600, 6, 0)
    snap = q.snapshot()
    assert (snap.length, snap.bytes_pending, snap.completed_reads, snap.completed_bytes) == (
        0,
        0,
        1,
        400,
    )


def test_read_queue_serves_reads_one_at_a_time_in_order():
    q = ReadQueue(concurrency=1)
    order: list[str] = []
    gate = threading.Event()

    def reader(name: str) -> None:
        with q.job(10), q.turn():
            order.append(f"{name}+")
            if name == "a":
                gate.wait(5)
            order.append(f"{name}-")

    threads = [threading.Thread(target=reader, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
        time.sleep(0.05)  # a, then b, then c queue up
    assert q.snapshot().length == 3 and order == ["a+"]
    gate.set()
    for t in threads:
        t.join(5)
    assert order == ["a+", "a-", "b+", "b-", "c+", "c-"]
    cancel = threading.Event()
    cancel.set()
    with q.turn(), pytest.raises(Cancelled), q.turn(cancel):
        pass
