"""Transport interfaces: errors, descriptors, notifications, pending transfers, the peer
transport and storage reader every implementation (NIXL, fallback) provides."""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualpath_agent.buffer import Cancelled, MemoryPool

log = logging.getLogger(__name__)


class TransferError(Exception):
    """A transfer failed (peer gone, backend error, bad address)."""


class TransferRejected(TransferError):
    """The transfer names memory that is not registered (here or at the peer): the request
    is wrong, not the peer gone. A caller's error, never a reason to drain a node."""


class ShortFile(Exception):
    """A file is not the size its block geometry implies (truncated or foreign)."""

    def __init__(self, path: Path, expected: int, actual: int) -> None:
        super().__init__(f"{path}: {actual} bytes, expected {expected}")
        self.path, self.expected, self.actual = path, expected, actual


@dataclass(frozen=True)
class Desc:
    local_address: int
    remote_address: int
    nbytes: int


@dataclass(frozen=True)
class FileRead:
    path: Path
    nbytes: int
    dst_address: int


_SPINS = 20


def _poll_sleep(spins: int) -> None:
    # Poll fast at first (a layer takes ~100 us on a fast link), then back off to 1 ms so
    # idle waits do not burn one of the node's cores.
    if spins < _SPINS:
        time.sleep(0)
    else:
        time.sleep(min(0.001, 0.00005 * (spins - _SPINS + 1)))


# ----- notifications -----------------------------------------------------------------------
class NotificationBox:
    """Notifications received from peers, keyed by (peer name, message).

    Pushed by a receiver (the socket fallback calls `add`), or pulled with `fetch` (NIXL's
    get_new_notifs): then whichever waiter finds nobody polling polls for everyone and
    hands out what it got, so no extra thread spins and no thread hop sits between a
    notification and its waiter. Unclaimed notifications expire, so a dead consumer cannot
    grow the box forever."""

    def __init__(
        self,
        fetch: Callable[[], dict[str, list[bytes]]] | None = None,
        ttl_s: float = 300.0,
    ) -> None:
        self._cond = threading.Condition()
        self._received: dict[tuple[str, bytes], float] = {}
        self._ttl_s = ttl_s
        self._fetch = fetch
        self._polling = False
        self.waiting = 0

    def add(self, peer: str, messages: Sequence[bytes]) -> None:
        with self._cond:
            self._add_locked(peer, messages)
            self._cond.notify_all()

    def _add_locked(self, peer: str, messages: Sequence[bytes]) -> None:
        now = time.monotonic()
        for msg in messages:
            self._received[(peer, bytes(msg))] = now
        if len(self._received) > 10_000:
            cutoff = now - self._ttl_s
            self._received = {k: t for k, t in self._received.items() if t > cutoff}

    def wait(
        self, peer: str, message: bytes, timeout_s: float, cancelled: threading.Event | None
    ) -> None:
        deadline = time.monotonic() + timeout_s
        key = (peer, message)
        spins = 0
        with self._cond:
            self.waiting += 1
        try:
            while True:
                with self._cond:
                    if key in self._received:
                        del self._received[key]
                        return
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled(f"cancelled while waiting for {message!r} from {peer}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransferError(
                            f"no notification {message.decode(errors='replace')} from {peer} "
                            f"within {timeout_s:.1f}s"
                        )
                    if self._fetch is None or self._polling:
                        self._cond.wait(min(left, 0.05))
                        continue
                    self._polling = True
                new: dict[str, list[bytes]] = {}
                try:
                    new = self._fetch()
                finally:
                    with self._cond:
                        self._polling = False
                        for source, messages in (new or {}).items():
                            self._add_locked(str(source), messages)
                        self._cond.notify_all()
                if new:
                    spins = 0
                else:
                    spins += 1
                    _poll_sleep(spins)
        finally:
            with self._cond:
                self.waiting -= 1


# ----- interfaces ----------------------------------------------------------------------------
class PendingTransfer(ABC):
    @abstractmethod
    def wait(self, timeout_s: float, cancelled: threading.Event | None) -> None: ...

    def progress(self) -> bool:
        """Advance the transfer without blocking; True once it has completed."""
        return False


class _Done(PendingTransfer):
    def wait(self, timeout_s: float, cancelled: threading.Event | None) -> None:
        return None


class PeerTransport(ABC):
    kind: str
    name: str

    def __init__(self) -> None:
        self.notifications = NotificationBox()
        self.pools: list[MemoryPool] = []

    @abstractmethod
    def register(self, pool: MemoryPool) -> None: ...

    @abstractmethod
    def metadata(self) -> bytes: ...

    @abstractmethod
    def add_peer(self, metadata: bytes) -> str:
        """Learn a peer from its metadata (idempotent); returns its name."""

    @abstractmethod
    def post_write(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str, notif: bytes
    ) -> PendingTransfer:
        """Start a one-sided WRITE local -> peer; `notif` reaches the peer after the data."""

    @abstractmethod
    def post_read(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str
    ) -> PendingTransfer:
        """Start a one-sided READ peer -> local."""

    def post_write_rows(
        self, peer: str, rows: np.ndarray, remote_mem: str, local_mem: str, notif: bytes
    ) -> PendingTransfer:
        """post_write for descriptors given as rows (n, 3) of uint64: local address, remote
        address, bytes. Hot paths build these with numpy (no Python object per block)."""
        descs = [Desc(int(a), int(r), int(n)) for a, r, n in rows]
        return self.post_write(peer, descs, remote_mem, local_mem, notif)

    def prepare_layer_writes(
        self, peer: str, rows: np.ndarray, remote_mem: str, local_mem: str
    ) -> LayerWrites:
        """WRITEs of the same blocks' slices, layer after layer: `rows` is (layers, blocks,
        3) of uint64 (local address, remote address, bytes). Checked once here; a transport
        may prepare every layer's descriptors now, so posting a layer costs little."""
        self._check_local_rows(rows.reshape(-1, 3))
        return self._layer_writes(peer, rows, remote_mem, local_mem)

    def _layer_writes(
        self, peer: str, rows: np.ndarray, remote_mem: str, local_mem: str
    ) -> LayerWrites:
        """Generic: each layer posted through post_write_rows."""
        return LayerWrites(self, peer, rows, remote_mem, local_mem)

    def wait_notification(
        self, peer: str, message: bytes, timeout_s: float, cancelled: threading.Event | None
    ) -> None:
        self.notifications.wait(peer, message, timeout_s, cancelled)

    def close(self) -> None:
        return None

    def _check_local(self, address: int, nbytes: int) -> MemoryPool:
        for pool in self.pools:
            if pool.contains(address, nbytes):
                return pool
        raise TransferRejected(f"address range 0x{address:x}+{nbytes} is not in registered memory")

    def _check_local_rows(self, rows: np.ndarray) -> None:
        """_check_local for every row at once."""
        start, end = rows[:, 0], rows[:, 0] + rows[:, 2]
        inside = np.zeros(len(rows), dtype=bool)
        for pool in self.pools:
            inside |= (start >= pool.base_address) & (end <= pool.base_address + pool.size)
        if not inside.all():
            bad = int(np.argmin(inside))
            self._check_local(int(rows[bad, 0]), int(rows[bad, 2]))  # raises, naming it


class LayerWrites:
    """Prepared per-layer WRITEs to one peer (see PeerTransport.prepare_layer_writes).
    Release it once every posted write has completed."""

    def __init__(
        self, transport: PeerTransport, peer: str, rows: np.ndarray, remote_mem: str, local_mem: str
    ) -> None:
        self.transport, self.peer, self.rows = transport, peer, rows
        self.remote_mem, self.local_mem = remote_mem, local_mem

    def post(self, layer: int, notif: bytes) -> PendingTransfer:
        return self.transport.post_write_rows(
            self.peer, self.rows[layer], self.remote_mem, self.local_mem, notif
        )

    def release(self) -> None:
        return None


class StorageReader(ABC):
    kind: str
    direct_io: bool = True

    @abstractmethod
    def start_read(self, reads: Sequence[FileRead]) -> PendingTransfer:
        """Start reading whole files into registered host memory (raises ShortFile when a
        file has the wrong size); wait() on the result to finish it."""

    def read_files(
        self, reads: Sequence[FileRead], timeout_s: float, cancelled: threading.Event | None
    ) -> None:
        self.start_read(reads).wait(timeout_s, cancelled)

    def _open(self, path: Path, nbytes: int) -> int:
        flags = os.O_RDONLY | (os.O_DIRECT if self.direct_io else 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct_io:
                raise
            # The filesystem refuses O_DIRECT (some tmpfs): read through the page cache.
            log.warning("O_DIRECT refused; storage reads use the page cache", extra={"path": path})
            self.direct_io = False
            fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        if size != nbytes:
            os.close(fd)
            raise ShortFile(path, nbytes, size)
        return fd


def release_logged(release: Callable[[], Any], what: str) -> None:
    """Run a release/close step on a cleanup path: its failure must not mask the error
    being handled (or fail a finished transfer), but it is never silent either."""
    try:
        release()
    except Exception as exc:
        log.warning("release failed", extra={"what": what, "error": str(exc)})


def settle(handles: Iterable[PendingTransfer], timeout_s: float, what: str) -> None:
    """After an error, wait for transfers that may still touch memory about to be freed.
    Their own failures are logged, not raised: the first error is the one to report."""
    for handle in handles:
        release_logged(functools.partial(handle.wait, timeout_s, None), what)
