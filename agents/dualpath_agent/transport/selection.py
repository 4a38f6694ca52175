"""Choosing the data plane: NIXL where it loads, else the fallback, loudly."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dualpath_agent.buffer import MemoryPool
from dualpath_agent.transport.base import PeerTransport, StorageReader
from dualpath_agent.transport.fallback import PreadReader, SocketPeerTransport
from dualpath_agent.transport.nixl import NixlPeerTransport, NixlPosixReader, NixlRuntime
from dualpath_agent.transport.qos import QosConfig

log = logging.getLogger(__name__)


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
