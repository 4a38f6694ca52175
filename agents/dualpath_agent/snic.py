"""Storage NIC model: a read-bandwidth cap and the node's storage read queue.

The paper's scheduler balances load by each node's storage read queue (read_q) because
the storage NIC (SNIC) is the bottleneck. On a laptop or in CI the disk is not, so the
agent can cap its own storage reads with a token bucket (off by default) to emulate a
saturated SNIC. The queue of reads (how many requests, how many bytes still to read) and
the bytes in flight are tracked here and reported in Stat, metrics and to the controller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dualpath_agent.buffer import Cancelled


class TokenBucket:
    """Byte-rate limiter modelling a link: each transfer occupies the link for
    nbytes / rate seconds, in arrival order (FIFO). rate 0 = unlimited."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = float(bytes_per_s)
        self._lock = threading.Lock()
        self._next_free = 0.0

    @property
    def enabled(self) -> bool:
        return self.bytes_per_s > 0

    def slot(self, nbytes: int, now: float | None = None) -> tuple[float, float]:
        """Reserve link time for `nbytes`: (start, end) on the time.monotonic() clock."""
        now = time.monotonic() if now is None else now
        if not self.enabled:
            return now, now
        with self._lock:
            start = max(self._next_free, now)
            self._next_free = start + nbytes / self.bytes_per_s
            return start, self._next_free

    def reserve(self, nbytes: int, now: float | None = None) -> float:
        """Reserve `nbytes`; returns how long until the link has carried them."""
        now = time.monotonic() if now is None else now
        return max(0.0, self.slot(nbytes, now)[1] - now)

    def acquire(self, nbytes: int, cancelled: threading.Event | None = None) -> None:
        wait_until(self.slot(nbytes)[1], cancelled)


def wait_until(deadline: float, cancelled: threading.Event | None = None) -> None:
    """Sleep until a time.monotonic() deadline; raises Cancelled when cancelled first."""
    wait = deadline - time.monotonic()
    if wait <= 0:
        return
    if cancelled is None:
        time.sleep(wait)
    elif cancelled.wait(wait):
        raise Cancelled("storage read cancelled while waiting for SNIC bandwidth")


@dataclass
class ReadQueueSnapshot:
    length: int
    bytes_pending: int
    # Tokens whose KV the queued reads still have to load (bytes pending, in tokens).
    tokens_pending: int
    inflight_bytes: int
    completed_reads: int
    completed_bytes: int


class ReadJob:
    def __init__(self, queue: ReadQueue, total_bytes: int, total_tokens: int) -> None:
        self._queue = queue
        self.total = total_bytes
        self.remaining = total_bytes
        self.tokens = total_tokens

    @property
    def tokens_pending(self) -> int:
        if self.total <= 0:
            return 0
        return self.tokens * max(self.remaining, 0) // self.total

    def begin(self, nbytes: int) -> None:
        """Bytes admitted to the SNIC and being read now."""
        self._queue._inflight(nbytes)

    def end(self, nbytes: int) -> None:
        self._queue._inflight(-nbytes)
        self._queue._progress(self, nbytes)

    @contextmanager
    def chunk(self, nbytes: int) -> Iterator[None]:
        self.begin(nbytes)
        try:
            yield
        finally:
            self.end(nbytes)


class ReadQueue:
    """Requests queued or reading from storage on this node (read_q), with byte counts.

    Reads are served first come, first served, `concurrency` at a time (default 1): a
    request that got the storage NIC finishes before the next one starts, so it can go on to
    its next step (streaming its layers, copying to the device) while the next one reads,
    instead of every request finishing late together.
    """

    def __init__(self, concurrency: int = 1) -> None:
        self._lock = threading.Lock()
        self._jobs: set[ReadJob] = set()
        self._inflight_bytes = 0
        self._completed_reads = 0
        self._completed_bytes = 0
        self._concurrency = max(1, concurrency)
        self._turn = threading.Condition()
        self._waiting: list[int] = []
        self._active = 0
        self._tickets = 0

    @contextmanager
    def turn(self, cancelled: threading.Event | None = None) -> Iterator[None]:
        """Hold one of the storage read slots (FIFO)."""
        with self._turn:
            self._tickets += 1
            ticket = self._tickets
            self._waiting.append(ticket)
            try:
                while self._waiting[0] != ticket or self._active >= self._concurrency:
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled("storage read cancelled while queued")
                    self._turn.wait(0.05)
            finally:
                self._waiting.remove(ticket)
                self._turn.notify_all()
            self._active += 1
        try:
            yield
        finally:
            with self._turn:
                self._active -= 1
                self._turn.notify_all()

    @contextmanager
    def job(self, total_bytes: int, total_tokens: int = 0) -> Iterator[ReadJob]:
        job = ReadJob(self, total_bytes, total_tokens)
        with self._lock:
            self._jobs.add(job)
        try:
            yield job
        finally:
            with self._lock:
                self._jobs.discard(job)
                self._completed_reads += 1

    def _inflight(self, delta: int) -> None:
        with self._lock:
            self._inflight_bytes += delta

    def _progress(self, job: ReadJob, nbytes: int) -> None:
        with self._lock:
            job.remaining -= nbytes
            self._completed_bytes += nbytes

    def snapshot(self) -> ReadQueueSnapshot:
        with self._lock:
            return ReadQueueSnapshot(
                length=len(self._jobs),
                bytes_pending=sum(max(j.remaining, 0) for j in self._jobs),
                tokens_pending=sum(j.tokens_pending for j in self._jobs),
                inflight_bytes=self._inflight_bytes,
                completed_reads=self._completed_reads,
                completed_bytes=self._completed_bytes,
            )
