"""NIXL: one agent per process with the UCX and POSIX backends.

- `NixlPeerTransport`: the agent's memory tiers are registered once; peers exchange NIXL
  metadata over the agent's gRPC API (the metadata travels inside ServeLayers/Merge
  requests). Transfers are one-sided WRITE/READ into the peer's registered buffer; the
  target learns that data landed from the NIXL notification that follows it.
- `NixlPosixReader`: block files -> registered host buffer through NIXL's POSIX backend,
  opened with O_DIRECT (page-aligned offsets, lengths and buffers).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dualpath_agent.buffer import Cancelled, MemoryPool
from dualpath_agent.transport.base import (
    Desc,
    FileRead,
    LayerWrites,
    NotificationBox,
    PeerTransport,
    PendingTransfer,
    StorageReader,
    TransferError,
    TransferRejected,
    _Done,
    _poll_sleep,
    release_logged,
)

log = logging.getLogger(__name__)


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
            release_logged(self._handle.release, f"NIXL {self._what} handle")


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
            release_logged(handle.release, f"NIXL WRITE to {self.peer} handle")
            raise TransferError(f"NIXL WRITE to {self.peer} failed to post")
        return _NixlPending(self._runtime, handle, f"WRITE to {self.peer}")

    def release(self) -> None:
        for handle in (self._local, self._remote):
            if handle is not None:
                release_logged(handle.release, f"NIXL prepared descriptors for {self.peer}")
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
                try:  # only a warm-up; transfers connect too
                    self._agent.make_connection(name)
                except Exception as exc:
                    log.info(
                        "NIXL connection warm-up failed", extra={"peer": name, "error": str(exc)}
                    )
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
            release_logged(handle.release, f"NIXL {op} to {peer} handle")
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
            release_logged(
                functools.partial(self._agent.deregister_memory, reg), "NIXL registration"
            )
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
            release_logged(
                lambda: self._agent.deregister_memory(reg, backends=["POSIX"]),
                "NIXL POSIX file registration",
            )
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
                release_logged(handle.release, "NIXL POSIX read handle")
                raise TransferError("NIXL POSIX read failed to post")
        except BaseException:
            self._cleanup(reg, fds)
            raise
        return _PosixPending(self, handle, reg, fds)
