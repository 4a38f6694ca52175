"""The agent's resources and the data-path steps the gRPC service composes.

AgentCore owns: the block store, the host pool (PE/DE buffer) and the device pool (VRAM or
DRAM), the transports, the SNIC token bucket and read queue, the table of requests that
hold buffer space, and the bookkeeping of transfers in flight (for graceful shutdown).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpath_agent.blockfile import ChecksumMismatch, crc32c, crc32c_concat
from dualpath_agent.buffer import Cancelled, DeviceBuffer, HostBuffer, Region
from dualpath_agent.held import HeldTable
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.metrics import AgentMetrics, Snapshot
from dualpath_agent.plan import BlockPlan
from dualpath_agent.snic import ReadQueue, TokenBucket
from dualpath_agent.staging import (
    UNCAPPED,
    UNQUEUED,
    ReadSession,
    Staged,
    size_mismatch,
)
from dualpath_agent.store import BlockStore, StoreFaults
from dualpath_agent.transport import QosConfig, Transports, apply_qos, select_transports

log = logging.getLogger(__name__)


class ShuttingDown(Exception):
    pass


@dataclass
class AgentConfig:
    node: str
    role: str
    store_dir: Path
    capacity_bytes: int = 0
    listen: str = "127.0.0.1:0"
    metrics_port: int = 0
    buffer_bytes: int = 256 << 20
    device_bytes: int = 256 << 20
    device_mode: str = "auto"
    snic_read_bytes_per_s: float = 0.0
    transport: str = "auto"
    qos: QosConfig = field(default_factory=QosConfig)
    grace_s: float = 10.0
    hold_s: float = 120.0
    # After a peer stream broke off, wait this long before reusing the region it wrote to.
    region_quarantine_s: float = 5.0
    transfer_timeout_s: float = 60.0
    allocation_timeout_s: float = 30.0
    storage_chunk_bytes: int = 8 << 20
    # Storage reads served at once (FIFO); see ReadQueue.
    read_concurrency: int = 1
    # ServeLayers reads in groups of about this many bytes and streams each group while the
    # next one is read (0 = one group: read everything, then stream).
    stream_group_bytes: int = 16 << 20
    rescan_s: float = 10.0
    faults: StoreFaults = field(default_factory=StoreFaults)

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0]


class AgentCore:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent_name = f"{config.node}-{uuid.uuid4().hex[:8]}"
        # QoS goes into the environment before NIXL/UCX initialise.
        self.qos_applied = apply_qos(config.qos)
        self.store = BlockStore(config.store_dir, config.capacity_bytes, faults=config.faults)
        self.store.rebuild()
        self.host = HostBuffer(config.buffer_bytes)
        self.device = DeviceBuffer(config.device_bytes, config.device_mode)
        self.host_pool = self.host.pool("host")
        self.device_pool = self.device.pool("device")
        self.transports: Transports = select_transports(
            config.transport,
            self.agent_name,
            config.listen_host,
            [self.host_pool, self.device_pool],
            config.qos,
        )
        self.peer = self.transports.peer
        self.storage = self.transports.storage
        self.bucket = TokenBucket(config.snic_read_bytes_per_s)
        self.read_queue = ReadQueue(config.read_concurrency)
        self.held = HeldTable()
        self.metrics = AgentMetrics(self.snapshot)
        self._active: dict[int, threading.Event] = {}
        self.peer_checksum_failures = 0
        self._active_lock = threading.Lock()
        self._ids = itertools.count()
        self.shutting_down = threading.Event()
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._housekeeping, daemon=True, name="janitor")
        self._janitor.start()
        log.info(
            "agent core ready",
            extra={
                "agent_name": self.agent_name,
                "peer_transport": self.peer.kind,
                "storage_transport": self.storage.kind,
                "fallback_reason": self.transports.fallback_reason,
                "device_tier": self.device.info.tier,
                "device_detail": self.device.info.detail,
                "qos_applied": self.qos_applied,
                "host_buffer_locked": self.host.locked,
                "snic_read_bytes_per_s": config.snic_read_bytes_per_s,
            },
        )

    # ----- lifecycle ---------------------------------------------------------------------
    @contextlib.contextmanager
    def activity(self, parent: threading.Event | None = None) -> Iterator[threading.Event]:
        """Register a transfer in flight; its event is set to cancel it (shutdown)."""
        if self.shutting_down.is_set():
            raise ShuttingDown("agent is shutting down")
        cancel = threading.Event()
        key = next(self._ids)
        with self._active_lock:
            self._active[key] = cancel
        try:
            yield cancel
        finally:
            with self._active_lock:
                self._active.pop(key, None)

    @property
    def active_transfers(self) -> int:
        with self._active_lock:
            return len(self._active)

    def drain(self, grace_s: float) -> int:
        """Refuse new work, let transfers in flight finish for up to grace_s, then cancel the
        rest; returns how many had to be cancelled."""
        self.shutting_down.set()
        deadline = time.monotonic() + grace_s
        while self.active_transfers and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._active_lock:
            left = list(self._active.values())
        for cancel in left:
            cancel.set()
        end = time.monotonic() + 5
        while self.active_transfers and time.monotonic() < end:
            time.sleep(0.05)
        return len(left)

    def close(self) -> None:
        self._stop.set()
        self.held.clear()
        self.peer.close()

    def _housekeeping(self) -> None:
        last_rescan = time.monotonic()
        while not self._stop.wait(1.0):
            for request_id, kind in self.held.expire(time.time()):
                log.warning(
                    "lease expired, buffer freed", extra={"request_id": request_id, "kind": kind}
                )
            if self.config.rescan_s and time.monotonic() - last_rescan > self.config.rescan_s:
                last_rescan = time.monotonic()
                try:
                    self.store.rescan()
                except OSError as exc:
                    log.warning("store rescan failed", extra={"error": str(exc)})

    def defer_release(self, region: Region, seconds: float, why: str) -> None:
        """Free a region later: a peer may still be writing into it after a failed transfer,
        and reusing it at once could let late bytes land in another request's KV."""
        log.warning("region quarantined before reuse", extra={"seconds": seconds, "why": why})
        timer = threading.Timer(seconds, region.release)
        timer.daemon = True
        timer.start()

    # ----- observability ------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        q = self.read_queue.snapshot()
        s = self.store.stats()
        return Snapshot(
            read_queue_length=q.length,
            read_queue_bytes=q.bytes_pending,
            read_queue_tokens=q.tokens_pending,
            snic_inflight_bytes=q.inflight_bytes,
            snic_read_bytes_per_s=self.bucket.bytes_per_s,
            store_blocks=s.blocks,
            store_bytes=s.bytes_used,
            capacity_bytes=s.capacity_bytes,
            evictions=s.evictions,
            store_checksum_failures=s.checksum_failures,
            buffer_free={"host": self.host_pool.free_bytes, "device": self.device_pool.free_bytes},
            buffer_total={"host": self.host_pool.size, "device": self.device_pool.size},
            held_requests=len(self.held),
            active_transfers=self.active_transfers,
            peer_transport=self.peer.kind,
            storage_transport=self.storage.kind,
            fallback_reason=self.transports.fallback_reason,
            device_tier=self.device.info.tier,
            qos_applied=self.qos_applied,
        )

    # ----- device tier access ----------------------------------------------------------------
    def device_bytes(self, address: int, nbytes: int) -> memoryview:
        """Host-visible copy (or view) of device-tier bytes, for verification and read-back."""
        pool = self.device_pool
        if pool.mem_type == "DRAM":
            return pool.host_view(address - pool.base_address, nbytes)
        scratch = bytearray(nbytes)
        self.device.copy_out(ctypes_buffer_address(scratch), address, nbytes)
        return memoryview(scratch)

    def copy_to_device(self, dst_address: int, src_address: int, nbytes: int) -> None:
        self.device.copy_in(dst_address, src_address, nbytes)

    def write_device(self, dst_address: int, data: bytes | memoryview) -> None:
        pool = self.device_pool
        if pool.mem_type == "DRAM":
            pool.host_view(dst_address - pool.base_address, len(data))[:] = data
            return
        scratch = bytearray(data)
        self.device.copy_in(dst_address, ctypes_buffer_address(scratch), len(scratch))

    # ----- storage -> host pool -----------------------------------------------------------
    @contextlib.contextmanager
    def read_session(
        self,
        blocks: Sequence[BlockPlan],
        layout: BlockLayout,
        cancelled: threading.Event,
        path_label: str,
        storage_nic: bool = True,
    ) -> Iterator[ReadSession]:
        """One request's turn on the node's storage: counted in the read queue from the
        moment it is asked for (waiting for the read slot, buffer space or bandwidth is
        queueing), its blocks pinned (never evicted while read), then the read slot held
        (FIFO) while the caller stages some or all of the blocks. With storage_nic=False
        (a P/D hand-off, which a cluster moves over the compute network) the blocks are
        read without a read-queue entry or the storage-NIC cap."""
        sizes = [layout.file_bytes(b.tokens) for b in blocks]
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            job: Any = (
                stack.enter_context(self.read_queue.job(sum(sizes), sum(b.tokens for b in blocks)))
                if storage_nic
                else UNQUEUED
            )
            stored = stack.enter_context(self.store.pinned([b.block_hash for b in blocks]))
            for st, size, b in zip(stored, sizes, blocks, strict=True):
                if st.file_bytes != size:
                    raise size_mismatch(self, b, layout, size)
            if storage_nic:
                stack.enter_context(self.read_queue.turn(cancelled))
            bucket = self.bucket if storage_nic else UNCAPPED
            yield ReadSession(
                self, list(blocks), layout, stored, sizes, job, cancelled, path_label, bucket
            )
        if storage_nic:
            self.metrics.storage_read_seconds.observe(time.monotonic() - started)

    @contextlib.contextmanager
    def stage(
        self,
        blocks: Sequence[BlockPlan],
        layout: BlockLayout,
        cancelled: threading.Event,
        path_label: str,
        storage_nic: bool = True,
    ) -> Iterator[Staged]:
        """Read and verify all the blocks (see ReadSession.stage); the region is released on
        exit unless the caller sets `staged.kept`."""
        with self.read_session(blocks, layout, cancelled, path_label, storage_nic) as session:
            staged = session.stage(range(len(blocks)))
        try:
            yield staged
        finally:
            if not staged.kept:
                staged.release()

    # ----- verification in the device tier --------------------------------------------------
    def count_checksum_failure(self, where: str) -> None:
        """Count a verification failure; storage ones are also counted by the store when it
        quarantines the block, so only the others are added here for Stat."""
        self.metrics.checksum_failures.labels(where).inc()
        if where != "storage":
            with self._active_lock:
                self.peer_checksum_failures += 1

    def verify_region_layer(
        self,
        region_address: int,
        region_layout: RegionLayout,
        layer: int,
        blocks: Sequence[BlockPlan],
        crcs: Mapping[bytes, Sequence[int]],
        where: str,
    ) -> None:
        """Check each block's slice of one layer against its CRC32C (end-to-end check)."""
        bpt = region_layout.bytes_per_token_layer
        if self._verify_span(region_address, region_layout, layer, blocks, crcs):
            return
        # The span failed (or is not contiguous): check block by block to name the culprit.
        for b in blocks:
            address = region_address + region_layout.offset(layer, b.first_token)
            actual = crc32c(self.device_bytes(address, b.tokens * bpt))
            expected = crcs[b.block_hash][layer]
            if actual != expected:
                self.count_checksum_failure(where)
                raise ChecksumMismatch(b.block_hash, layer, expected, actual)

    def _verify_span(
        self,
        region_address: int,
        region_layout: RegionLayout,
        layer: int,
        blocks: Sequence[BlockPlan],
        crcs: Mapping[bytes, Sequence[int]],
    ) -> bool:
        """One CRC call over consecutive blocks' slices of a layer (contiguous in the
        layer-major region), against the blocks' CRCs combined: one large call outside the
        GIL instead of one small call per block. True when every byte matched."""
        bpt = region_layout.bytes_per_token_layer
        if len(blocks) < 2 or any(
            b.first_token != a.first_token + a.tokens for a, b in itertools.pairwise(blocks)
        ):
            return False
        expected = crc32c_concat([(crcs[b.block_hash][layer], b.tokens * bpt) for b in blocks])
        address = region_address + region_layout.offset(layer, blocks[0].first_token)
        nbytes = sum(b.tokens for b in blocks) * bpt
        return crc32c(self.device_bytes(address, nbytes)) == expected


def ctypes_buffer_address(buf: bytearray) -> int:
    import ctypes

    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


__all__ = [
    "AgentConfig",
    "AgentCore",
    "BlockPlan",
    "Cancelled",
    "ShuttingDown",
    "Staged",
]
