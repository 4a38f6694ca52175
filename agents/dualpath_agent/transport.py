"""Moving bytes: NIXL (UCX to peers, POSIX for files) or an explicitly chosen fallback.

- `NixlPeerTransport`: one NIXL agent per process with the UCX and POSIX backends. The
  agent's memory tiers are registered once; peers exchange NIXL metadata over the agent's
  gRPC API (the metadata travels inside ServeLayers/Merge requests). Transfers are
  one-sided WRITE/READ into the peer's registered buffer; the target learns that data
  landed from the NIXL notification that follows it.
- `NixlPosixReader`: block files -> registered host buffer through NIXL's POSIX backend,
  opened with O_DIRECT (page-aligned offsets, lengths and buffers).
- Fallback, used only where NIXL cannot load and never silently (the caller logs it,
  counts it in a metric and reports it in Stat): `SocketPeerTransport` (plain TCP with
  IP_TOS set from the DSCP, same one-sided semantics and notifications) and
  `PreadReader` (os.preadv).
- QoS: `apply_qos` exports UCX_IB_TRAFFIC_CLASS / UCX_IB_SL before NIXL starts (UCX reads
  them when it initialises) and computes IP_TOS for fallback sockets; it returns what it
  applied so Stat and the logs can show it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
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


# ----- QoS -------------------------------------------------------------------------------
@dataclass
class QosConfig:
    traffic_class: int | None = None  # IB traffic class / RoCE TC (UCX_IB_TRAFFIC_CLASS)
    service_level: int | None = None  # IB service level (UCX_IB_SL)
    dscp: int | None = None  # DSCP for fallback TCP sockets (IP_TOS = dscp << 2)

    @property
    def ip_tos(self) -> int | None:
        return None if self.dscp is None else (self.dscp << 2) & 0xFF


def apply_qos(qos: QosConfig) -> dict[str, str]:
    """Export the UCX QoS variables (before NIXL/UCX initialise) and say what was applied."""
    applied: dict[str, str] = {}
    if qos.traffic_class is not None:
        os.environ["UCX_IB_TRAFFIC_CLASS"] = str(qos.traffic_class)
        applied["UCX_IB_TRAFFIC_CLASS"] = str(qos.traffic_class)
    if qos.service_level is not None:
        os.environ["UCX_IB_SL"] = str(qos.service_level)
        applied["UCX_IB_SL"] = str(qos.service_level)
    if qos.ip_tos is not None:
        applied["IP_TOS"] = f"0x{qos.ip_tos:02x} (DSCP {qos.dscp}, fallback sockets)"
    ib = Path("/sys/class/infiniband")
    devices = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    if applied:
        # Say plainly when the IB settings cannot take effect (UCX then runs over TCP/shm).
        applied["ib_devices"] = ",".join(devices) or "none (IB/RoCE settings have no effect)"
    return applied


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


_SPINS = 20


def _poll_sleep(spins: int) -> None:
    # Poll fast at first (a layer takes ~100 us on a fast link), then back off to 1 ms so
    # idle waits do not burn one of the node's cores.
    if spins < _SPINS:
        time.sleep(0)
    else:
        time.sleep(min(0.001, 0.00005 * (spins - _SPINS + 1)))


# ----- NIXL ------------------------------------------------------------------------------------
class NixlRuntime:
    """The process's one NIXL agent (UCX + POSIX backends)."""

    def __init__(
        self,
        name: str,
        backends: Sequence[str] = ("UCX", "POSIX"),
        progress_delay_us: int = 100,
    ) -> None:
        from nixl._api import nixl_agent, nixl_agent_config, nixl_thread_sync_t

        # NIXL prints to stdout with its own handler; route it into our structured logs.
        nixl_log = logging.getLogger("nixl")
        nixl_log.handlers.clear()
        nixl_log.propagate = True
        config = nixl_agent_config(
            enable_prog_thread=True,
            backends=list(backends),
            sync_mode=nixl_thread_sync_t.NIXL_THREAD_SYNC_RW,
        )
        self.agent: Any = _create_agent(nixl_agent, name, config, progress_delay_us)
        self.name = name
        self.backends = sorted(self.agent.backends)
        if "UCX" not in self.backends:
            raise RuntimeError(f"NIXL loaded but its UCX backend did not start ({self.backends})")


_CREATE_LOCK = threading.Lock()


def _create_agent(factory: Any, name: str, config: Any, progress_delay_us: int) -> Any:
    """Create a nixl_agent whose progress thread sleeps between polls.

    The Python wrapper (1.5.1) hard-codes pthrDelay = 0: the progress thread then spins and
    an idle agent burns a whole core (measured: 92% of a core idle; 1.3% with 100 us). The
    wrapper offers no knob, so the bound constructor is wrapped for the duration of the call
    to set the delay on the config it builds.
    """
    import nixl._api as nixl_api

    real = nixl_api.nixlBind.nixlAgent

    def with_delay(agent_name: str, agent_config: Any) -> Any:
        agent_config.pthrDelay = progress_delay_us
        return real(agent_name, agent_config)

    with _CREATE_LOCK:
        nixl_api.nixlBind.nixlAgent = with_delay
        try:
            return factory(name, config)
        finally:
            nixl_api.nixlBind.nixlAgent = real


class _NixlPending(PendingTransfer):
    def __init__(self, runtime: NixlRuntime, handle: Any, what: str) -> None:
        self._agent = runtime.agent
        self._handle = handle
        self._what = what
        self._done = False

    def progress(self) -> bool:
        # Checking a handle's state is what completes it (and sends its notification) when
        # the progress thread has not yet: call it while posting more, not only at the end.
        if not self._done and self._agent.check_xfer_state(self._handle) == "DONE":
            self._done = True
        return self._done

    def wait(self, timeout_s: float, cancelled: threading.Event | None) -> None:
        deadline = time.monotonic() + timeout_s
        spins = 0
        try:
            while not self._done:
                state = self._agent.check_xfer_state(self._handle)
                if state == "DONE":
                    return
                if state == "ERR":
                    raise TransferError(f"NIXL {self._what} failed (backend error)")
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled(f"NIXL {self._what} cancelled")
                if time.monotonic() > deadline:
                    raise TransferError(f"NIXL {self._what} timed out after {timeout_s:.1f}s")
                spins += 1
                _poll_sleep(spins)
        finally:
            with contextlib.suppress(Exception):
                self._handle.release()


class _NixlLayerWrites(LayerWrites):
    """Both sides' descriptors of every layer prepared once (prep_xfer_dlist); a layer is
    then posted by index (make_prepped_xfer): no descriptor list is built per layer, and
    this thread's posting time is on the transfer's critical path."""

    def __init__(
        self,
        transport: NixlPeerTransport,
        peer: str,
        rows: np.ndarray,
        remote_mem: str,
        local_mem: str,
    ) -> None:
        super().__init__(transport, peer, rows, remote_mem, local_mem)
        self._agent = transport._agent
        self._runtime = transport.runtime
        layers, blocks = rows.shape[0], rows.shape[1]
        flat = rows.reshape(-1, 3)
        dev = np.zeros(len(flat), dtype=np.uint64)
        self._blocks = blocks
        self._local: Any = None
        self._remote: Any = None
        try:
            self._local = self._agent.prep_xfer_dlist(
                "NIXL_INIT_AGENT", np.column_stack((flat[:, 0], flat[:, 2], dev)), local_mem
            )
            self._remote = self._agent.prep_xfer_dlist(
                peer, np.column_stack((flat[:, 1], flat[:, 2], dev)), remote_mem
            )
        except Exception as exc:
            self.release()
            kind = TransferRejected if "NOT_FOUND" in str(exc) else TransferError
            raise kind(f"NIXL WRITE to {peer} could not be prepared: {exc}") from exc
        self._indices = np.arange(layers * blocks, dtype=np.int32).reshape(layers, blocks)

    def post(self, layer: int, notif: bytes) -> PendingTransfer:
        if not self._blocks:
            return _Done()
        index = self._indices[layer]
        try:
            handle = self._agent.make_prepped_xfer(
                "WRITE", self._local, index, self._remote, index, notif
            )
        except Exception as exc:
            raise TransferError(f"NIXL WRITE to {self.peer} could not start: {exc}") from exc
        if self._agent.transfer(handle) == "ERR":
            with contextlib.suppress(Exception):
                handle.release()
            raise TransferError(f"NIXL WRITE to {self.peer} failed to post")
        return _NixlPending(self._runtime, handle, f"WRITE to {self.peer}")

    def release(self) -> None:
        for handle in (self._local, self._remote):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.release()
        self._local = self._remote = None


def _descs(rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint64).reshape(-1, 3)


class NixlPeerTransport(PeerTransport):
    kind = "nixl-ucx"

    def __init__(self, runtime: NixlRuntime) -> None:
        super().__init__()
        self.runtime = runtime
        self.name = runtime.name
        self._agent = runtime.agent
        self._peers: set[str] = set()
        self._peers_lock = threading.Lock()
        self._registrations: list[Any] = []
        self.notifications = NotificationBox(fetch=self._fetch_notifications)

    def register(self, pool: MemoryPool) -> None:
        reg = self._agent.register_memory([(pool.base_address, pool.size, 0, "")], pool.mem_type)
        self._registrations.append(reg)
        self.pools.append(pool)

    def metadata(self) -> bytes:
        return bytes(self._agent.get_agent_metadata())

    def add_peer(self, metadata: bytes) -> str:
        with self._peers_lock:
            name = self._agent.add_remote_agent(metadata)
            if isinstance(name, bytes):
                name = name.decode()
            if name not in self._peers:
                self._peers.add(name)
                with contextlib.suppress(Exception):  # only a warm-up; transfers connect too
                    self._agent.make_connection(name)
                log.info("NIXL peer added", extra={"peer": name})
            return str(name)

    def post_write(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str, notif: bytes
    ) -> PendingTransfer:
        return self._post("WRITE", peer, descs, remote_mem, local_mem, notif)

    def post_read(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str
    ) -> PendingTransfer:
        return self._post("READ", peer, descs, remote_mem, local_mem, b"")

    def _post(
        self,
        op: str,
        peer: str,
        descs: Sequence[Desc],
        remote_mem: str,
        local_mem: str,
        notif: bytes,
    ) -> PendingTransfer:
        rows = np.array(
            [(d.local_address, d.remote_address, d.nbytes) for d in descs], dtype=np.uint64
        ).reshape(-1, 3)
        return self._post_rows(op, peer, rows, remote_mem, local_mem, notif)

    def _post_rows(
        self,
        op: str,
        peer: str,
        rows: np.ndarray,
        remote_mem: str,
        local_mem: str,
        notif: bytes,
    ) -> PendingTransfer:
        if not len(rows):
            return _Done()
        self._check_local_rows(rows)
        dev = np.zeros(len(rows), dtype=np.uint64)  # device id: 0 (one GPU per agent)
        local = self._agent.get_xfer_descs(
            np.column_stack((rows[:, 0], rows[:, 2], dev)), local_mem
        )
        remote = self._agent.get_xfer_descs(
            np.column_stack((rows[:, 1], rows[:, 2], dev)), remote_mem
        )
        try:
            handle = self._agent.initialize_xfer(op, local, remote, peer, notif)
        except Exception as exc:
            raise TransferError(f"NIXL {op} to {peer} could not start: {exc}") from exc
        state = self._agent.transfer(handle)
        if state == "ERR":
            with contextlib.suppress(Exception):
                handle.release()
            raise TransferError(f"NIXL {op} to {peer} failed to post")
        return _NixlPending(self.runtime, handle, f"{op} to {peer}")

    def _layer_writes(
        self, peer: str, rows: np.ndarray, remote_mem: str, local_mem: str
    ) -> LayerWrites:
        return _NixlLayerWrites(self, peer, rows, remote_mem, local_mem)

    def _fetch_notifications(self) -> dict[str, list[bytes]]:
        try:
            return {str(k): list(v) for k, v in self._agent.get_new_notifs().items()}
        except Exception as exc:  # a transient backend error: the waiter polls again
            log.warning("NIXL notification poll failed", extra={"error": str(exc)})
            return {}

    def close(self) -> None:
        for reg in self._registrations:
            with contextlib.suppress(Exception):
                self._agent.deregister_memory(reg)
        self._registrations.clear()


class _PosixPending(PendingTransfer):
    """A posted POSIX read; waiting finishes it and always frees its fds/registration."""

    def __init__(self, reader: NixlPosixReader, handle: Any, reg: Any, fds: list[int]) -> None:
        self._reader, self._handle, self._reg, self._fds = reader, handle, reg, fds
        self._done = False

    def wait(self, timeout_s: float, cancelled: threading.Event | None) -> None:
        if self._done:
            return
        try:
            _NixlPending(self._reader.runtime, self._handle, "POSIX read").wait(
                timeout_s, cancelled
            )
        finally:
            self._done = True
            self._reader._cleanup(self._reg, self._fds)


class NixlPosixReader(StorageReader):
    kind = "nixl-posix"

    def __init__(self, runtime: NixlRuntime) -> None:
        if "POSIX" not in runtime.backends:
            raise RuntimeError("NIXL POSIX backend unavailable")
        self.runtime = runtime
        self._agent = runtime.agent

    def _cleanup(self, reg: Any, fds: list[int]) -> None:
        if reg is not None:
            with contextlib.suppress(Exception):
                self._agent.deregister_memory(reg, backends=["POSIX"])
        for fd in fds:
            os.close(fd)

    def start_read(self, reads: Sequence[FileRead]) -> PendingTransfer:
        if not reads:
            return _Done()
        fds: list[int] = []
        reg = None
        try:
            for r in reads:
                fds.append(self._open(r.path, r.nbytes))
            rows = [(0, r.nbytes, fd, "") for r, fd in zip(reads, fds, strict=True)]
            reg = self._agent.register_memory(rows, "FILE", backends=["POSIX"])
            local = self._agent.get_xfer_descs(
                _descs([(r.dst_address, r.nbytes, 0) for r in reads]), "DRAM"
            )
            remote = self._agent.get_xfer_descs(
                _descs([(0, r.nbytes, fd) for r, fd in zip(reads, fds, strict=True)]), "FILE"
            )
            try:
                handle = self._agent.initialize_xfer(
                    "READ", local, remote, self.runtime.name, b"", backends=["POSIX"]
                )
            except Exception as exc:
                raise TransferError(f"NIXL POSIX read could not start: {exc}") from exc
            if self._agent.transfer(handle) == "ERR":
                with contextlib.suppress(Exception):
                    handle.release()
                raise TransferError("NIXL POSIX read failed to post")
        except BaseException:
            self._cleanup(reg, fds)
            raise
        return _PosixPending(self, handle, reg, fds)


# ----- fallback ----------------------------------------------------------------------------------
class PreadReader(StorageReader):
    kind = "fallback-pread"

    def __init__(self, pools: Sequence[MemoryPool]) -> None:
        self.pools = list(pools)

    def _view(self, address: int, nbytes: int) -> memoryview:
        for pool in self.pools:
            if pool.contains(address, nbytes):
                return pool.host_view(address - pool.base_address, nbytes)
        raise TransferError(f"0x{address:x}+{nbytes} is not in a host pool")

    def start_read(self, reads: Sequence[FileRead]) -> PendingTransfer:
        """Reads synchronously (the fallback has no asynchronous engine)."""
        for r in reads:
            fd = self._open(r.path, r.nbytes)
            try:
                view = self._view(r.dst_address, r.nbytes)
                done = 0
                while done < r.nbytes:
                    n = os.preadv(fd, [view[done:]], done)
                    if n == 0:
                        raise ShortFile(r.path, r.nbytes, done)
                    done += n
            finally:
                os.close(fd)
        return _Done()


_FRAME = struct.Struct("<4sBHIQ")  # magic, op, sender name length, descriptor count, notif len
_DESC = struct.Struct("<QQ")
_MAGIC = b"DPX1"
_OP_WRITE, _OP_READ = 1, 2


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


def _recv_bytes(sock: socket.socket, nbytes: int) -> bytes:
    buf = bytearray(nbytes)
    _recv_exact(sock, memoryview(buf))
    return bytes(buf)


class _SocketPending(PendingTransfer):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self, timeout_s: float, cancelled: threading.Event | None) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.done.wait(0.05):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("socket transfer cancelled")
            if time.monotonic() > deadline:
                raise TransferError(f"socket transfer timed out after {timeout_s:.1f}s")
        if self.error is not None:
            raise TransferError(str(self.error)) from self.error


class SocketPeerTransport(PeerTransport):
    """One-sided WRITE/READ with notifications over plain TCP (the fallback data plane)."""

    kind = "fallback-tcp"

    def __init__(self, name: str, host: str, ip_tos: int | None) -> None:
        super().__init__()
        self.name = name
        self.ip_tos = ip_tos
        self._peers: dict[str, tuple[str, int]] = {}
        self._idle: dict[str, list[socket.socket]] = {}
        self._senders: dict[str, Queue[Any]] = {}
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, 0))
        self._tune(self._listener)
        self.endpoint = f"{host}:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept_loop, daemon=True, name="xfer-accept").start()

    def _tune(self, sock: socket.socket) -> None:
        if self.ip_tos is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, self.ip_tos)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def register(self, pool: MemoryPool) -> None:
        if pool.mem_type != "DRAM":
            raise RuntimeError("the socket fallback moves host memory only")
        self.pools.append(pool)

    def metadata(self) -> bytes:
        return json.dumps(
            {"kind": self.kind, "name": self.name, "endpoint": self.endpoint}
        ).encode()

    def add_peer(self, metadata: bytes) -> str:
        try:
            info = json.loads(metadata)
            if info.get("kind") != self.kind:
                raise ValueError
            host, port = str(info["endpoint"]).rsplit(":", 1)
        except (ValueError, KeyError, TypeError):
            raise TransferError(
                "peer metadata is not fallback-tcp metadata: the peer uses another transport"
            ) from None
        with self._lock:
            self._peers[str(info["name"])] = (host, int(port))
        return str(info["name"])

    def _view(self, address: int, nbytes: int) -> memoryview:
        pool = self._check_local(address, nbytes)
        return pool.host_view(address - pool.base_address, nbytes)

    # sending side
    def _connect(self, peer: str) -> socket.socket:
        with self._lock:
            idle = self._idle.get(peer)
            if idle:
                return idle.pop()
            if peer not in self._peers:
                raise TransferError(f"unknown peer {peer}")
            address = self._peers[peer]
        sock = socket.create_connection(address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tune(sock)
        return sock

    def _exchange(
        self, peer: str, op: int, descs: Sequence[Desc], notif: bytes, result: dict
    ) -> None:
        sock = self._connect(peer)
        ok = False
        try:
            name = self.name.encode()
            head = _FRAME.pack(_MAGIC, op, len(name), len(descs), len(notif)) + name
            head += b"".join(_DESC.pack(d.remote_address, d.nbytes) for d in descs) + notif
            sock.sendall(head)
            if op == _OP_WRITE:
                for d in descs:
                    sock.sendall(self._view(d.local_address, d.nbytes))
            status = _recv_bytes(sock, 1)
            if status != b"\0":
                (length,) = struct.unpack("<I", _recv_bytes(sock, 4))
                raise TransferError(f"peer {peer}: {_recv_bytes(sock, length).decode()}")
            if op == _OP_READ:
                for d in descs:
                    _recv_exact(sock, self._view(d.local_address, d.nbytes))
            ok = True
        except (OSError, ConnectionError) as exc:
            result["error"] = TransferError(f"socket transfer with {peer} failed: {exc}")
        except TransferError as exc:
            result["error"] = exc
        finally:
            if ok:
                with self._lock:
                    self._idle.setdefault(peer, []).append(sock)
            else:
                sock.close()

    def _post(self, op: int, peer: str, descs: Sequence[Desc], notif: bytes) -> PendingTransfer:
        """Queue a transfer on the peer's sender thread: one connection per peer, transfers
        in the order posted (layer i lands before layer i+1, like NIXL's posting order)."""
        for d in descs:
            self._check_local(d.local_address, d.nbytes)
        pending = _SocketPending()
        with self._lock:
            queue = self._senders.get(peer)
            if queue is None:
                queue = self._senders[peer] = Queue()
                threading.Thread(
                    target=self._send_loop, args=(peer, queue), daemon=True, name="xfer-send"
                ).start()
        queue.put((op, descs, notif, pending))
        return pending

    def _send_loop(self, peer: str, queue: Queue[Any]) -> None:
        while not self._stop.is_set():
            item = queue.get()
            if item is None:
                return
            op, descs, notif, pending = item
            result: dict[str, BaseException] = {}
            try:
                self._exchange(peer, op, descs, notif, result)
            except BaseException as exc:  # keep the sender alive for the next transfer
                result["error"] = exc
            pending.error = result.get("error")
            pending.done.set()

    def post_write(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str, notif: bytes
    ) -> PendingTransfer:
        return self._post(_OP_WRITE, peer, descs, notif)

    def post_read(
        self, peer: str, descs: Sequence[Desc], remote_mem: str, local_mem: str
    ) -> PendingTransfer:
        return self._post(_OP_READ, peer, descs, b"")

    # receiving side
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._tune(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.is_set():
                try:
                    head = _recv_bytes(conn, _FRAME.size)
                except (OSError, ConnectionError):
                    return
                try:
                    self._serve_one(conn, head)
                except (OSError, ConnectionError):
                    return

    def _serve_one(self, conn: socket.socket, head: bytes) -> None:
        magic, op, name_len, count, notif_len = _FRAME.unpack(head)
        if magic != _MAGIC:
            raise ConnectionError("bad frame")
        sender = _recv_bytes(conn, name_len).decode()
        raw = _recv_bytes(conn, count * _DESC.size)
        descs = [_DESC.unpack_from(raw, i * _DESC.size) for i in range(count)]
        notif = _recv_bytes(conn, notif_len)
        try:
            views = [self._view(addr, n) for addr, n in descs]
        except TransferError as exc:
            if op == _OP_WRITE:  # drain the payload so the stream stays in sync
                for _, n in descs:
                    _recv_bytes(conn, n)
            msg = str(exc).encode()
            conn.sendall(b"\1" + struct.pack("<I", len(msg)) + msg)
            return
        if op == _OP_WRITE:
            for view in views:
                _recv_exact(conn, view)
            conn.sendall(b"\0")
            if notif:
                self.notifications.add(sender, [notif])
        else:
            conn.sendall(b"\0")
            for view in views:
                conn.sendall(view)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for queue in self._senders.values():
                queue.put(None)
            for socks in self._idle.values():
                for s in socks:
                    s.close()
            self._idle.clear()


# ----- selection ------------------------------------------------------------------------------
@dataclass
class Transports:
    peer: PeerTransport
    storage: StorageReader
    fallback_reason: str  # empty when NIXL is used for both


def select_transports(
    mode: str,
    agent_name: str,
    host: str,
    pools: Sequence[MemoryPool],
    qos: QosConfig,
) -> Transports:
    """Pick the data plane. `nixl` fails when NIXL cannot load; `fallback` uses sockets and
    pread on purpose; `auto` tries NIXL and falls back with a loud error log."""
    if mode not in ("auto", "nixl", "fallback"):
        raise ValueError(f"--transport must be auto, nixl or fallback, got {mode!r}")
    reason = ""
    if mode != "fallback":
        try:
            runtime = NixlRuntime(agent_name)
            peer: PeerTransport = NixlPeerTransport(runtime)
            for pool in pools:
                peer.register(pool)
            try:
                storage: StorageReader = NixlPosixReader(runtime)
            except RuntimeError as exc:
                reason = f"storage reads use pread: {exc}"
                log.error("NIXL POSIX unavailable: FALLBACK storage reads", extra={"why": reason})
                storage = PreadReader(pools)
            return Transports(peer, storage, reason)
        except Exception as exc:
            if mode == "nixl":
                raise RuntimeError(f"--transport nixl: NIXL could not start: {exc}") from exc
            reason = f"NIXL could not start: {exc}"
            log.error(
                "FALLBACK TRANSPORT IN USE: NIXL could not start, using TCP sockets and pread",
                extra={"why": reason},
            )
    else:
        reason = "selected by --transport fallback"
        log.warning("fallback transport selected explicitly (TCP sockets + pread)")
    peer = SocketPeerTransport(agent_name, host, qos.ip_tos)
    for pool in pools:
        peer.register(pool)
    return Transports(peer, PreadReader(pools), reason)
