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

import numpy as np

from dualpath_agent.blockfile import (
    BlockFormatError,
    BlockHeader,
    ChecksumMismatch,
    crc32c,
    crc32c_concat,
    verify_image,
)
from dualpath_agent.buffer import (
    Cancelled,
    DeviceBuffer,
    HostBuffer,
    MemoryPool,
    Region,
    copy_bytes,
)
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.metrics import AgentMetrics, Snapshot
from dualpath_agent.snic import ReadQueue, TokenBucket, wait_until
from dualpath_agent.store import (
    BlockCorrupt,
    BlockNotFound,
    BlockStore,
    LayoutMismatch,
    StoreFaults,
)
from dualpath_agent.transport import (
    FileRead,
    QosConfig,
    ShortFile,
    Transports,
    apply_qos,
    select_transports,
)

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


@dataclass
class BlockPlan:
    """One block of a request: where its tokens sit in the request region."""

    block_hash: bytes
    parent_hash: bytes
    tokens: int
    first_token: int


@dataclass
class Staged:
    """Block file images read from storage into the host pool (verified)."""

    region: Region
    blocks: list[BlockPlan]
    image_offsets: list[int]
    headers: list[BlockHeader]
    layout: BlockLayout
    # Set by a caller that keeps the staged blocks beyond the `stage` block (for Merge).
    kept: bool = False

    def layer_address(self, index: int, layer: int) -> int:
        return (
            self.region.address
            + self.image_offsets[index]
            + self.headers[index].layer_offset(layer)
        )

    def index_of(self) -> dict[bytes, int]:
        return {b.block_hash: i for i, b in enumerate(self.blocks)}

    def release(self) -> int:
        self.region.release()
        return self.region.nbytes


@dataclass
class Held:
    """Buffer space a request keeps between calls (released by Release or its lease)."""

    kind: str  # "load" | "staged" | "merged"
    region: Region | None
    expires_at: float
    # kind "staged": the block groups a ServeLayers read, kept for Merge.
    staged: list[Staged] = field(default_factory=list)
    region_layout: RegionLayout | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def release(self) -> int:
        freed = sum(st.release() for st in self.staged)
        if self.region is not None:
            self.region.release()
            freed += self.region.nbytes
        return freed


class HeldTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Held] = {}

    def put(self, request_id: str, held: Held) -> None:
        with self._lock:
            old = self._items.pop((request_id, held.kind), None)
            self._items[(request_id, held.kind)] = held
        if old is not None:
            log.warning("replaced held buffer", extra={"request_id": request_id, "kind": held.kind})
            old.release()

    def get(self, request_id: str, kind: str) -> Held | None:
        with self._lock:
            return self._items.get((request_id, kind))

    def pop(self, request_id: str, kind: str) -> Held | None:
        with self._lock:
            return self._items.pop((request_id, kind), None)

    def has_any(self, request_id: str) -> bool:
        with self._lock:
            return any(rid == request_id for rid, _ in self._items)

    def release_all_of(self, request_id: str) -> tuple[list[str], int]:
        with self._lock:
            keys = [k for k in self._items if k[0] == request_id]
            held = [self._items.pop(k) for k in keys]
        return [h.kind for h in held], sum(h.release() for h in held)

    def expire(self, now: float) -> list[tuple[str, str]]:
        with self._lock:
            keys = [k for k, h in self._items.items() if h.expires_at <= now]
            held = [self._items.pop(k) for k in keys]
        for h in held:
            h.release()
        return keys

    def clear(self) -> None:
        with self._lock:
            held = list(self._items.values())
            self._items.clear()
        for h in held:
            h.release()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class ReadSession:
    """Stages blocks of one request during its read turn (see AgentCore.read_session)."""

    def __init__(
        self,
        core: AgentCore,
        blocks: list[BlockPlan],
        layout: BlockLayout,
        stored: Sequence[Any],
        sizes: list[int],
        job: Any,
        cancelled: threading.Event,
        path_label: str,
        bucket: TokenBucket,
    ) -> None:
        self.core, self.blocks, self.layout = core, blocks, layout
        self.stored, self.sizes, self.job = stored, sizes, job
        self.cancelled, self.path_label = cancelled, path_label
        self.bucket = bucket

    def stage(self, indices: Sequence[int]) -> Staged:
        """Read whole block files into the host pool through the SNIC cap and verify every
        byte (header + each layer's CRC32C) before anything uses them. Reads go in chunks,
        two in flight: chunk k+1 is read while chunk k is verified. Under a cap each chunk
        occupies the emulated SNIC for nbytes / rate and is "in flight" for that time. The
        caller owns the result and must release it."""
        core = self.core
        blocks = [self.blocks[i] for i in indices]
        sizes = [self.sizes[i] for i in indices]
        stored = [self.stored[i] for i in indices]
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        total = sum(sizes)
        region = core.host_pool.allocate(total, core.config.allocation_timeout_s, self.cancelled)
        try:
            headers = core._read_and_verify(
                region,
                stored,
                blocks,
                sizes,
                offsets,
                self.layout,
                self.job,
                self.cancelled,
                self.bucket,
            )
        except BaseException:
            region.release()
            raise
        core.metrics.bytes.labels(self.path_label, "storage", "in").inc(total)
        return Staged(region, blocks, offsets, headers, self.layout)


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
                else _UNQUEUED
            )
            stored = stack.enter_context(self.store.pinned([b.block_hash for b in blocks]))
            for st, size, b in zip(stored, sizes, blocks, strict=True):
                if st.file_bytes != size:
                    raise self._size_mismatch(b, layout, size)
            if storage_nic:
                stack.enter_context(self.read_queue.turn(cancelled))
            bucket = self.bucket if storage_nic else _UNCAPPED
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

    def _read_and_verify(
        self,
        region: Region,
        stored: Sequence[Any],
        blocks: Sequence[BlockPlan],
        sizes: Sequence[int],
        offsets: Sequence[int],
        layout: BlockLayout,
        job: Any,
        cancelled: threading.Event,
        bucket: TokenBucket,
    ) -> list[BlockHeader]:
        items = list(range(len(blocks)))
        headers: list[BlockHeader] = []
        pending: tuple[list[int], Any, float, int] | None = None

        def finish(p: tuple[list[int], Any, float, int]) -> None:
            indices, handle, link_done, nbytes = p
            try:
                self._wait_read(handle, blocks, layout, cancelled)
                wait_until(link_done, cancelled)
            finally:
                job.end(nbytes)
            for i in indices:
                headers.append(self._check_image(region, offsets[i], sizes[i], blocks[i], layout))

        try:
            for indices in _chunks(items, sizes, self.config.storage_chunk_bytes):
                nbytes = sum(sizes[i] for i in indices)
                link_start, link_done = bucket.slot(nbytes)
                wait_until(link_start, cancelled)
                reads = [
                    FileRead(stored[i].path, sizes[i], region.address + offsets[i]) for i in indices
                ]
                job.begin(nbytes)
                try:
                    handle = self._start_read(reads, blocks, layout)
                except BaseException:
                    job.end(nbytes)
                    raise
                previous, pending = pending, (indices, handle, link_done, nbytes)
                if previous is not None:
                    finish(previous)
            if pending is not None:
                previous, pending = pending, None
                finish(previous)
        finally:
            if pending is not None:  # an error: never free the region under a live read
                with contextlib.suppress(Exception):
                    pending[1].wait(self.config.transfer_timeout_s, None)
                job.end(pending[3])
        return headers

    def _start_read(
        self, reads: Sequence[FileRead], blocks: Sequence[BlockPlan], layout: BlockLayout
    ) -> Any:
        try:
            return self.storage.start_read(reads)
        except ShortFile as exc:
            raise self._short_file(exc, blocks, layout) from exc
        except FileNotFoundError as exc:
            name = Path(str(exc.filename)).name.removesuffix(".blk")
            raise BlockNotFound([bytes.fromhex(name)]) from exc

    def _wait_read(
        self, handle: Any, blocks: Sequence[BlockPlan], layout: BlockLayout, cancelled: Any
    ) -> None:
        try:
            handle.wait(self.config.transfer_timeout_s, cancelled)
        except ShortFile as exc:
            raise self._short_file(exc, blocks, layout) from exc

    def _short_file(
        self, exc: ShortFile, blocks: Sequence[BlockPlan], layout: BlockLayout
    ) -> Exception:
        block_hash = bytes.fromhex(Path(exc.path).name.removesuffix(".blk"))
        plan = next(b for b in blocks if b.block_hash == block_hash)
        return self._size_mismatch(plan, layout, exc.expected)

    def _size_mismatch(self, block: BlockPlan, layout: BlockLayout, expected: int) -> Exception:
        """A file that is not the size the request implies: either the request's geometry is
        wrong (the block is fine: FAILED_PRECONDITION) or the file is damaged (quarantine)."""
        try:
            header = self.store.read_header(block.block_hash)  # quarantines a damaged file
        except BlockCorrupt as exc:
            return exc
        except BlockNotFound as exc:
            return exc
        return LayoutMismatch(
            f"block {block.block_hash.hex()} is stored as {header.layers} layers x "
            f"{header.tokens} tokens x {header.bytes_per_token_layer} bytes; the request says "
            f"{layout.layers} x {block.tokens} x {layout.bytes_per_token_layer} "
            f"({expected} bytes on disk expected)"
        )

    def _check_image(
        self, region: Region, offset: int, size: int, block: BlockPlan, layout: BlockLayout
    ) -> BlockHeader:
        image = region.view()[offset : offset + size]
        try:
            header = verify_image(image, block.block_hash)
        except (BlockFormatError, ChecksumMismatch) as exc:
            self.count_checksum_failure("storage")
            raise self.store.quarantine(block.block_hash, str(exc)) from exc
        geometry = (header.layers, header.tokens, header.bytes_per_token_layer)
        if geometry != (layout.layers, block.tokens, layout.bytes_per_token_layer):
            raise LayoutMismatch(
                f"block {block.block_hash.hex()} is stored as {header.layers} layers x "
                f"{header.tokens} tokens x {header.bytes_per_token_layer} bytes; the request "
                f"says {layout.layers} x {block.tokens} x {layout.bytes_per_token_layer}"
            )
        return header

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


class _Unqueued:
    """The read-queue job of a read that is not a storage-NIC read (a hand-off)."""

    def begin(self, nbytes: int) -> None:
        return None

    def end(self, nbytes: int) -> None:
        return None


_UNQUEUED = _Unqueued()
_UNCAPPED = TokenBucket(0)


def ctypes_buffer_address(buf: bytearray) -> int:
    import ctypes

    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _chunks(items: Sequence[int], sizes: Sequence[int], limit: int) -> Iterator[list[int]]:
    """Consecutive items grouped up to `limit` bytes (at least one item per group)."""
    chunk: list[int] = []
    size = 0
    for i in items:
        if chunk and size + sizes[i] > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += sizes[i]
    if chunk:
        yield chunk


def copy_staged_layer_to_region(
    core: AgentCore,
    staged: Staged,
    indices: Sequence[int],
    layer: int,
    region_address: int,
    region_layout: RegionLayout,
) -> int:
    """Copy one layer of the given staged blocks into a region (host -> device tier).

    On a DRAM device tier, runs of equal blocks that sit back to back in both places are
    moved with one strided numpy copy (one call instead of one per block; numpy releases
    the GIL); anything else, and GPU memory, goes block by block through the tier's copy.
    """
    moved = 0
    for run in _uniform_runs(staged, indices):
        first = staged.blocks[run[0]]
        n = staged.headers[run[0]].layer_bytes
        dst = region_address + region_layout.offset(layer, first.first_token)
        if len(run) > 1 and core.device_pool.mem_type == "DRAM":
            pool = core.device_pool
            src = np.frombuffer(staged.region.view(), dtype=np.uint8)
            start = staged.image_offsets[run[0]] + staged.headers[run[0]].layer_offset(layer)
            stride = staged.image_offsets[run[1]] - staged.image_offsets[run[0]]
            src_rows = np.lib.stride_tricks.as_strided(
                src[start:], shape=(len(run), n), strides=(stride, 1), writeable=False
            )
            dst_rows = np.frombuffer(
                pool.host_view(dst - pool.base_address, len(run) * n), dtype=np.uint8
            ).reshape(len(run), n)
            np.copyto(dst_rows, src_rows)
        else:
            for i in run:
                b = staged.blocks[i]
                core.copy_to_device(
                    region_address + region_layout.offset(layer, b.first_token),
                    staged.layer_address(i, layer),
                    staged.headers[i].layer_bytes,
                )
        moved += n * len(run)
    return moved


def _uniform_runs(staged: Staged, indices: Sequence[int]) -> list[list[int]]:
    """Split indices into runs of consecutive equal-size blocks: evenly spaced in the
    staging area and consecutive in token order (so both sides are regular strides)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs:
            run = runs[-1]
            prev = run[-1]
            same = (
                i == prev + 1
                and staged.blocks[i].tokens == staged.blocks[prev].tokens
                and staged.blocks[i].first_token
                == staged.blocks[prev].first_token + staged.blocks[prev].tokens
                and staged.headers[i].file_bytes == staged.headers[prev].file_bytes
            )
            if same:
                run.append(i)
                continue
        runs.append([i])
    return runs


__all__ = [
    "AgentConfig",
    "AgentCore",
    "BlockCorrupt",
    "BlockPlan",
    "Cancelled",
    "Held",
    "HeldTable",
    "MemoryPool",
    "ShuttingDown",
    "Staged",
    "copy_bytes",
    "copy_staged_layer_to_region",
]
