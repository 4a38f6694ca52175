"""Tooling RPCs: PutBlocks (seed the store), ReadBlock (a stored block's bytes) and
ReadRegion (a held request region), for the demo, tests, benches and debugging."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from dualpath.v1 import agent_pb2

from dualpath_agent import kvgen
from dualpath_agent.blockfile import crc32c
from dualpath_agent.blockhash import validate_hash
from dualpath_agent.errors import AgentError
from dualpath_agent.held import HeldLoad, HeldMerged, HeldRegion
from dualpath_agent.layout import BlockLayout
from dualpath_agent.validation import check_ref, parse_layout, require

if TYPE_CHECKING:
    from dualpath_agent.service import AgentService

CHUNK = 1 << 20

_REGION_KINDS: dict[int, type[HeldRegion]] = {
    agent_pb2.RegionKind.REGION_KIND_LOAD: HeldLoad,
    agent_pb2.RegionKind.REGION_KIND_MERGED: HeldMerged,
}


@dataclass
class _IncomingBlock:
    """A block PutBlocks is receiving: its first chunk's ref and layout, then the data."""

    index: int
    ref: agent_pb2.BlockRef
    layout: BlockLayout
    total: int
    crc: int
    synthetic: bool
    data: bytearray

    @property
    def field(self) -> str:
        return f"blocks[{self.index}]"


def put_blocks(
    svc: AgentService, chunks: Iterator[agent_pb2.BlockChunk]
) -> agent_pb2.PutBlocksResponse:
    reply = agent_pb2.PutBlocksResponse()
    current: _IncomingBlock | None = None
    index = -1
    for chunk in chunks:
        if chunk.HasField("ref"):
            if current is not None:
                _store_block(svc, current, reply)
            index += 1
            current = _first_chunk(chunk, index)
        else:
            if current is None:
                raise ValueError("blocks[0]: the first chunk must carry ref and layout")
            current.data += chunk.data
            if len(current.data) > current.total:
                raise ValueError(f"blocks[{index}]: more data than total_bytes")
    if current is not None:
        _store_block(svc, current, reply)
    return reply


def _first_chunk(chunk: agent_pb2.BlockChunk, index: int) -> _IncomingBlock:
    field = f"blocks[{index}]"
    layout = parse_layout(chunk.layout, f"{field}.layout")
    check_ref(chunk.ref, layout, field)
    expected = layout.block_bytes(chunk.ref.tokens)
    if chunk.total_bytes != expected:
        raise ValueError(
            f"{field}.total_bytes is {chunk.total_bytes}; {layout.layers} layers x "
            f"{chunk.ref.tokens} tokens x {layout.bytes_per_token_layer} bytes = {expected}"
        )
    data = bytearray(chunk.data)
    if chunk.synthetic:
        data = bytearray(kvgen.block_bytes(chunk.ref.block_hash, layout, chunk.ref.tokens))
    return _IncomingBlock(index, chunk.ref, layout, expected, chunk.crc32c, chunk.synthetic, data)


def _store_block(
    svc: AgentService, block: _IncomingBlock, reply: agent_pb2.PutBlocksResponse
) -> None:
    data = block.data
    if len(data) != block.total:
        raise ValueError(
            f"{block.field}: received {len(data)} bytes, total_bytes says {block.total}"
        )
    if not block.synthetic and crc32c(data) != block.crc:
        raise ValueError(f"{block.field}.crc32c does not match the data (corrupted in transit)")
    ref = block.ref
    if svc.core.store.put(
        ref.block_hash, ref.parent_hash, block.layout, ref.tokens, memoryview(data)
    ):
        reply.blocks_written += 1
        svc.metrics.bytes.labels("put", "storage", "out").inc(len(data))
    else:
        reply.blocks_already_present += 1


def read_block(
    svc: AgentService, request: agent_pb2.ReadBlockRequest
) -> Iterator[agent_pb2.ReadBlockChunk]:
    validate_hash(request.block_hash, "block_hash")
    layout = parse_layout(request.layout) if request.HasField("layout") else None
    layer = request.layer if request.HasField("layer") else None
    header, data = svc.core.store.read_block(request.block_hash, layer, layout)
    svc.metrics.bytes.labels("read_block", "storage", "in").inc(len(data))
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        last = start + CHUNK >= len(data)
        yield agent_pb2.ReadBlockChunk(
            data=bytes(view[start : start + CHUNK]),
            layer_crc32c=(
                [header.layer_crcs[layer]] if layer is not None else list(header.layer_crcs)
            )
            if last
            else [],
            tokens=header.tokens,
        )


def read_region(
    svc: AgentService, request: agent_pb2.ReadRegionRequest
) -> Iterator[agent_pb2.ReadRegionChunk]:
    require(request.request_id, "request_id")
    kind = _REGION_KINDS.get(request.kind)
    if kind is None:
        raise ValueError("kind must be REGION_KIND_LOAD or REGION_KIND_MERGED")
    held = svc.core.held.get(request.request_id, kind)
    if held is None:
        raise AgentError(
            grpc.StatusCode.NOT_FOUND,
            f"no {kind.kind} region held for request {request.request_id}",
        )
    rl = held.region_layout
    start, length = 0, rl.nbytes
    if request.HasField("layer"):
        if request.layer >= rl.layers:
            raise ValueError(f"layer {request.layer} out of range 0..{rl.layers - 1}")
        start, length = rl.offset(request.layer, 0), rl.layer_stride
    for offset in range(0, length, CHUNK):
        n = min(CHUNK, length - offset)
        data = bytes(svc.core.device_bytes(held.region.address + start + offset, n))
        yield agent_pb2.ReadRegionChunk(data=data, offset=offset, total_bytes=length)
