"""Commit (prefill side) and Merge (decode side): the prefill agent sends its loaded region
plus the missed tokens' KV to the decode agent, which assembles the whole request region
(staged prefix blocks copied locally, the rest READ from the prefill agent), verifies every
byte and persists the new full blocks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from dualpath.v1 import agent_pb2

from dualpath_agent import kvgen
from dualpath_agent.blockfile import ChecksumMismatch, crc32c
from dualpath_agent.buffer import Region
from dualpath_agent.errors import AgentError, PeerFailed
from dualpath_agent.held import HeldLoad, HeldMerged, HeldStaged
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.messages import block_refs, checksums_msg, layer_crcs_of, layout_msg
from dualpath_agent.plan import BlockPlan
from dualpath_agent.staging import copy_staged_layer_to_region
from dualpath_agent.store import StoreFull
from dualpath_agent.transport import Desc
from dualpath_agent.validation import (
    check_layer_span,
    parse_layout,
    plan_blocks,
    require,
    token_ranges_missing,
)

if TYPE_CHECKING:
    from dualpath_agent.service import AgentService

log = logging.getLogger(__name__)


def _plan_new_blocks(
    refs: Sequence[agent_pb2.BlockRef], layout: BlockLayout, prefix_tokens: int
) -> list[BlockPlan]:
    """The new full blocks the missed tokens complete, placed after the prefix."""
    return plan_blocks(refs, layout, "new_blocks", prefix_tokens, allow_empty=True, full_only=True)


def commit(svc: AgentService, request: agent_pb2.CommitRequest) -> agent_pb2.CommitResponse:
    core = svc.core
    started = time.monotonic()
    require(request.request_id, "request_id")
    held = core.held.get(request.request_id, HeldLoad)
    if held is None:
        raise AgentError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"request {request.request_id} is not loaded on this agent "
            "(Load with release_after_load=false first; it may have been released)",
        )
    layout, prefix, prefix_tokens = held.layout, held.blocks, held.prefix_tokens
    missed = request.missed_tokens
    if missed > held.missed_reserved:
        raise ValueError(
            f"missed_tokens {missed} exceeds the {held.missed_reserved} reserved by Load"
        )
    new_blocks = _plan_new_blocks(request.new_blocks, layout, prefix_tokens)
    if new_blocks:
        if any(b.tokens < layout.block_tokens for b in prefix):
            raise ValueError("the prefix ends with a partial block; new_blocks cannot follow it")
        if prefix and new_blocks[0].parent_hash != prefix[-1].block_hash:
            raise ValueError("new_blocks[0].parent_hash does not chain to the last prefix block")
        if len(new_blocks) * layout.block_tokens > missed:
            raise ValueError(
                f"new_blocks cover {len(new_blocks) * layout.block_tokens} tokens, "
                f"more than missed_tokens {missed}"
            )
    endpoint = request.decode_agent_endpoint or held.decode_endpoint
    if not endpoint:
        raise ValueError("decode_agent_endpoint is required (not given here nor to Load)")
    region_layout = held.region_layout
    bpt = layout.bytes_per_token_layer
    with core.activity():
        missed_crcs = _write_missed(
            svc, request, held.region, region_layout, layout, prefix_tokens, new_blocks
        )
        merge = agent_pb2.MergeRequest(
            request_id=request.request_id,
            layout=layout_msg(layout),
            prefix_blocks=block_refs(prefix),
            prefix_checksums=checksums_msg(prefix, held.crcs),
            missed_tokens=missed,
            missed_layer_crc32c=missed_crcs,
            new_blocks=block_refs(new_blocks),
            persist=request.persist,
            source_agent=core.peer.name,
            source_metadata=core.peer.metadata(),
            source_mem_type=core.device_pool.mem_type,
            source_address=held.region.address,
            source_layer_stride=region_layout.layer_stride,
        )
        try:
            reply = svc.peers.stub(endpoint).Merge(
                merge, timeout=core.config.transfer_timeout_s * 4
            )
        except grpc.RpcError as exc:
            raise PeerFailed(endpoint, exc) from exc
    core.held.pop(request.request_id, HeldLoad)
    held.release()
    svc.metrics.bytes.labels("merge", "peer", "out").inc(reply.bytes_from_peer)
    total = layout.layers * (prefix_tokens + missed) * bpt
    return agent_pb2.CommitResponse(
        bytes_sent_to_decode=reply.bytes_from_peer,
        bytes_decode_had=max(0, total - reply.bytes_from_peer),
        blocks_persisted=reply.blocks_persisted,
        blocks_already_present=reply.blocks_already_present,
        elapsed_s=time.monotonic() - started,
        persist_error=reply.persist_error,
    )


def _write_missed(
    svc: AgentService,
    request: agent_pb2.CommitRequest,
    region: Region,
    region_layout: RegionLayout,
    layout: BlockLayout,
    prefix_tokens: int,
    new_blocks: list[BlockPlan],
) -> list[int]:
    """Put the missed tokens' KV (what prefill computed) into the region; CRC per layer."""
    missed = request.missed_tokens
    bpt = layout.bytes_per_token_layer
    per_layer = missed * bpt
    if request.missed_kv and len(request.missed_kv) != layout.layers * per_layer:
        raise ValueError(
            f"missed_kv is {len(request.missed_kv)} bytes; layers x missed_tokens x "
            f"bytes_per_token_layer = {layout.layers * per_layer}"
        )
    crcs = []
    tail = missed - len(new_blocks) * layout.block_tokens
    for layer in range(layout.layers):
        if request.missed_kv:
            data: bytes | memoryview = memoryview(request.missed_kv)[
                layer * per_layer : (layer + 1) * per_layer
            ]
        else:
            pieces = [kvgen.layer_bytes(b.block_hash, layer, b.tokens, bpt) for b in new_blocks]
            if tail:
                pieces.append(kvgen.tail_layer_bytes(request.request_id.encode(), layer, tail, bpt))
            data = b"".join(pieces)
        if per_layer:
            svc.core.write_device(region.address + region_layout.offset(layer, prefix_tokens), data)
        crcs.append(crc32c(data))
    return crcs


def merge(svc: AgentService, request: agent_pb2.MergeRequest) -> agent_pb2.MergeResponse:
    core = svc.core
    started = time.monotonic()
    require(request.request_id, "request_id")
    require(request.source_metadata, "source_metadata")
    layout = parse_layout(request.layout)
    prefix = plan_blocks(request.prefix_blocks, layout, "prefix_blocks", allow_empty=True)
    prefix_tokens = sum(b.tokens for b in prefix)
    new_blocks = _plan_new_blocks(request.new_blocks, layout, prefix_tokens)
    crcs = layer_crcs_of(request.prefix_checksums)
    for i, b in enumerate(prefix):
        if len(crcs.get(b.block_hash, ())) != layout.layers:
            raise ValueError(f"prefix_checksums lacks {layout.layers} CRCs for prefix_blocks[{i}]")
    missed = request.missed_tokens
    if missed and len(request.missed_layer_crc32c) != layout.layers:
        raise ValueError(f"missed_layer_crc32c needs {layout.layers} values")
    if request.source_mem_type not in ("DRAM", "VRAM"):
        raise ValueError(f"source_mem_type must be DRAM or VRAM, got {request.source_mem_type!r}")
    region_layout = RegionLayout(
        layout.layers, prefix_tokens + missed, layout.bytes_per_token_layer
    )
    if request.source_layer_stride < region_layout.layer_stride:
        raise ValueError(
            f"source_layer_stride {request.source_layer_stride} < {region_layout.layer_stride}"
        )
    check_layer_span(
        request.source_address,
        request.source_layer_stride,
        layout.layers,
        region_layout.layer_stride,
        "source_address",
    )
    staged_held = core.held.pop(request.request_id, HeldStaged)
    try:
        with core.activity() as cancel:
            source = svc.add_peer(request.source_metadata)
            region = core.device_pool.allocate(
                region_layout.nbytes, core.config.allocation_timeout_s, cancel
            )
            try:
                reply = _assemble(
                    svc,
                    request,
                    layout,
                    prefix,
                    crcs,
                    region,
                    region_layout,
                    staged_held,
                    source,
                    cancel,
                )
                reply.MergeFrom(
                    _persist(svc, layout, new_blocks, region, region_layout, request.persist)
                )
            except BaseException:
                region.release()
                raise
            core.held.put(
                request.request_id,
                HeldMerged(
                    expires_at=svc.hold_deadline(), region=region, region_layout=region_layout
                ),
            )
    finally:
        if staged_held is not None:
            staged_held.release()
    svc.metrics.merge_seconds.observe(time.monotonic() - started)
    return reply


def _assemble(
    svc: AgentService,
    request: agent_pb2.MergeRequest,
    layout: BlockLayout,
    prefix: list[BlockPlan],
    crcs: dict[bytes, list[int]],
    region: Region,
    region_layout: RegionLayout,
    staged_held: HeldStaged | None,
    source: str,
    cancel: threading.Event,
) -> agent_pb2.MergeResponse:
    """Prefix blocks staged here are copied locally; everything else is READ from the
    source region. Every byte is verified against the CRCs the prefill side sent."""
    core = svc.core
    bpt = layout.bytes_per_token_layer
    local: list[BlockPlan] = []
    from_staging = 0
    for staged in staged_held.staged if staged_held is not None else []:
        where = staged.index_of()
        indices: list[int] = []
        for b in prefix:
            i = where.get(b.block_hash)
            if i is not None and staged.headers[i].tokens == b.tokens:
                # Place the staged block at this request's token position.
                staged.blocks[i] = b
                local.append(b)
                indices.append(i)
        for layer in range(layout.layers):
            from_staging += copy_staged_layer_to_region(
                core, staged, indices, layer, region.address, region_layout
            )
    covered = [(b.first_token, b.first_token + b.tokens) for b in local]
    gaps = token_ranges_missing(region_layout.total_tokens, covered)
    descs = [
        Desc(
            region.address + region_layout.offset(layer, start),
            request.source_address + layer * request.source_layer_stride + start * bpt,
            (end - start) * bpt,
        )
        for layer in range(layout.layers)
        for start, end in gaps
    ]
    from_peer = sum(d.nbytes for d in descs)
    core.peer.post_read(source, descs, request.source_mem_type, core.device_pool.mem_type).wait(
        core.config.transfer_timeout_s, cancel
    )
    svc.metrics.bytes.labels("merge", "peer", "in").inc(from_peer)
    prefix_tokens = sum(b.tokens for b in prefix)
    try:
        for layer in range(layout.layers):
            core.verify_region_layer(region.address, region_layout, layer, prefix, crcs, "peer")
            if request.missed_tokens:
                address = region.address + region_layout.offset(layer, prefix_tokens)
                actual = crc32c(core.device_bytes(address, request.missed_tokens * bpt))
                if actual != request.missed_layer_crc32c[layer]:
                    core.count_checksum_failure("peer")
                    raise AgentError(
                        grpc.StatusCode.DATA_LOSS,
                        f"missed-token KV of layer {layer} failed verification after the transfer",
                    )
    except ChecksumMismatch as exc:
        raise AgentError(grpc.StatusCode.DATA_LOSS, f"merge verification failed: {exc}") from exc
    return agent_pb2.MergeResponse(
        bytes_merged=region_layout.nbytes,
        bytes_from_peer=from_peer,
        bytes_from_staging=from_staging,
    )


def _persist(
    svc: AgentService,
    layout: BlockLayout,
    new_blocks: list[BlockPlan],
    region: Region,
    region_layout: RegionLayout,
    persist: bool,
) -> agent_pb2.MergeResponse:
    """Write back the new full blocks (dense bytes gathered layer by layer)."""
    reply = agent_pb2.MergeResponse()
    if not persist:
        return reply
    bpt = layout.bytes_per_token_layer
    for b in new_blocks:
        t0 = time.monotonic()
        data = b"".join(
            bytes(
                svc.core.device_bytes(
                    region.address + region_layout.offset(layer, b.first_token), b.tokens * bpt
                )
            )
            for layer in range(layout.layers)
        )
        try:
            written = svc.core.store.put(b.block_hash, b.parent_hash, layout, b.tokens, data)
        except (StoreFull, OSError) as exc:
            reply.persist_error = f"block {b.block_hash.hex()}: {exc}"
            log.error("persist failed", extra={"error": reply.persist_error})
            break
        if written:
            reply.blocks_persisted += 1
            svc.metrics.bytes.labels("merge", "storage", "out").inc(len(data))
            svc.metrics.persist_seconds.observe(time.monotonic() - t0)
        else:
            reply.blocks_already_present += 1
    return reply
