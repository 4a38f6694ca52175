"""Storage -> host pool: a request's read turn stages verified block images (ReadSession),
and staged layers are copied into a request region in the device tier."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualpath_agent.blockfile import BlockFormatError, BlockHeader, ChecksumMismatch, verify_image
from dualpath_agent.buffer import Region
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.plan import BlockPlan
from dualpath_agent.snic import TokenBucket, wait_until
from dualpath_agent.store import BlockCorrupt, BlockNotFound, LayoutMismatch
from dualpath_agent.transport import FileRead, ShortFile
from dualpath_agent.transport.base import settle

if TYPE_CHECKING:
    from dualpath_agent.core import AgentCore


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
            headers = _read_and_verify(
                core,
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


def _read_and_verify(
    core: AgentCore,
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
            _wait_read(core, handle, blocks, layout, cancelled)
            wait_until(link_done, cancelled)
        finally:
            job.end(nbytes)
        for i in indices:
            headers.append(_check_image(core, region, offsets[i], sizes[i], blocks[i], layout))

    try:
        for indices in _chunks(items, sizes, core.config.storage_chunk_bytes):
            nbytes = sum(sizes[i] for i in indices)
            link_start, link_done = bucket.slot(nbytes)
            wait_until(link_start, cancelled)
            reads = [
                FileRead(stored[i].path, sizes[i], region.address + offsets[i]) for i in indices
            ]
            job.begin(nbytes)
            try:
                handle = _start_read(core, reads, blocks, layout)
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
            settle([pending[1]], core.config.transfer_timeout_s, "storage read")
            job.end(pending[3])
    return headers


def _start_read(
    core: AgentCore, reads: Sequence[FileRead], blocks: Sequence[BlockPlan], layout: BlockLayout
) -> Any:
    try:
        return core.storage.start_read(reads)
    except ShortFile as exc:
        raise _short_file(core, exc, blocks, layout) from exc
    except FileNotFoundError as exc:
        name = Path(str(exc.filename)).name.removesuffix(".blk")
        raise BlockNotFound([bytes.fromhex(name)]) from exc


def _wait_read(
    core: AgentCore, handle: Any, blocks: Sequence[BlockPlan], layout: BlockLayout, cancelled: Any
) -> None:
    try:
        handle.wait(core.config.transfer_timeout_s, cancelled)
    except ShortFile as exc:
        raise _short_file(core, exc, blocks, layout) from exc


def _short_file(
    core: AgentCore, exc: ShortFile, blocks: Sequence[BlockPlan], layout: BlockLayout
) -> Exception:
    block_hash = bytes.fromhex(Path(exc.path).name.removesuffix(".blk"))
    plan = next(b for b in blocks if b.block_hash == block_hash)
    return size_mismatch(core, plan, layout, exc.expected)


def size_mismatch(
    core: AgentCore, block: BlockPlan, layout: BlockLayout, expected: int
) -> Exception:
    """A file that is not the size the request implies: either the request's geometry is
    wrong (the block is fine: FAILED_PRECONDITION) or the file is damaged (quarantine)."""
    try:
        header = core.store.read_header(block.block_hash)  # quarantines a damaged file
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
    core: AgentCore, region: Region, offset: int, size: int, block: BlockPlan, layout: BlockLayout
) -> BlockHeader:
    image = region.view()[offset : offset + size]
    try:
        header = verify_image(image, block.block_hash)
    except (BlockFormatError, ChecksumMismatch) as exc:
        core.count_checksum_failure("storage")
        raise core.store.quarantine(block.block_hash, str(exc)) from exc
    geometry = (header.layers, header.tokens, header.bytes_per_token_layer)
    if geometry != (layout.layers, block.tokens, layout.bytes_per_token_layer):
        raise LayoutMismatch(
            f"block {block.block_hash.hex()} is stored as {header.layers} layers x "
            f"{header.tokens} tokens x {header.bytes_per_token_layer} bytes; the request "
            f"says {layout.layers} x {block.tokens} x {layout.bytes_per_token_layer}"
        )
    return header


class _Unqueued:
    """The read-queue job of a read that is not a storage-NIC read (a hand-off)."""

    def begin(self, nbytes: int) -> None:
        return None

    def end(self, nbytes: int) -> None:
        return None


UNQUEUED = _Unqueued()
UNCAPPED = TokenBucket(0)


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
