"""The fallback data plane, used only where NIXL cannot load and never silently (the caller
logs it, counts it in a metric and reports it in Stat): `SocketPeerTransport` (plain TCP
with IP_TOS set from the DSCP, the same one-sided semantics and notifications as NIXL, over
a small framed wire protocol) and `PreadReader` (os.preadv)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from queue import Queue
from typing import Any

from dualpath_agent.buffer import Cancelled, MemoryPool
from dualpath_agent.transport.base import (
    Desc,
    FileRead,
    PeerTransport,
    PendingTransfer,
    ShortFile,
    StorageReader,
    TransferError,
    _Done,
    release_logged,
)

log = logging.getLogger(__name__)


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
        release_logged(self._listener.close, "fallback transport listener")
        with self._lock:
            for queue in self._senders.values():
                queue.put(None)
            for socks in self._idle.values():
                for s in socks:
                    s.close()
            self._idle.clear()
