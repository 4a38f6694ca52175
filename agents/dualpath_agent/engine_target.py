"""Loads that land straight in an inference engine's own paged KV cache (EngineKvTarget).

The engine (vLLM, through the DualPath connector) registers its KV-cache tensors with NIXL
in its own process and describes them here: where each layer's blocks start, how a block's
Layer Block splits into planes (K and V together or apart) and which engine block each
stored block goes to. Agents then write Layer Blocks from their host buffer into those
blocks with NIXL, and follow each layer with a notification the engine counts.

Pure: geometry checks, write descriptors and notification tags, shared by the agents (the
writers) and the connector (which waits on the tags), so both read one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from dualpath.v1 import agent_pb2

from dualpath_agent.layout import BlockLayout

MEM_TYPES = ("DRAM", "VRAM")
# Parts of a load, in notification tags: blocks this agent read from its own storage, and
# blocks the decode-side agent read and wrote (DE_READ / SPLIT).
LOCAL_PART = "l"
REMOTE_PART = "r"


@dataclass(frozen=True)
class EngineTarget:
    agent_name: str
    agent_metadata: bytes
    mem_type: str
    # (layers, planes) uint64: address of block 0 of each layer's plane.
    plane_addresses: np.ndarray
    plane_block_bytes: int
    block_stride: int
    # uint64, one engine block id per block of the load, in order.
    block_ids: np.ndarray
    transfer_id: str

    @property
    def planes(self) -> int:
        return int(self.plane_addresses.shape[1])

    def subset(self, start: int, stop: int) -> EngineTarget:
        """The same target for blocks [start, stop) of the load (what one writer serves)."""
        return EngineTarget(
            self.agent_name,
            self.agent_metadata,
            self.mem_type,
            self.plane_addresses,
            self.plane_block_bytes,
            self.block_stride,
            self.block_ids[start:stop],
            self.transfer_id,
        )

    def to_proto(self) -> agent_pb2.EngineKvTarget:
        return agent_pb2.EngineKvTarget(
            agent_name=self.agent_name,
            agent_metadata=self.agent_metadata,
            mem_type=self.mem_type,
            plane_addresses=[int(a) for a in self.plane_addresses.reshape(-1)],
            planes=self.planes,
            plane_block_bytes=self.plane_block_bytes,
            block_stride=self.block_stride,
            block_ids=[int(b) for b in self.block_ids],
            transfer_id=self.transfer_id,
        )

    def write_rows(
        self, layer0_sources: Sequence[int], source_layer_strides: Sequence[int]
    ) -> np.ndarray:
        """NIXL WRITE descriptors of every layer of this target's blocks, (layers, blocks x
        planes, 3) uint64 rows of (source address, engine address, bytes). Block k's layer i
        sits in the source at layer0_sources[k] + i * source_layer_strides[k], its planes
        one after the other."""
        n = len(self.block_ids)
        if len(layer0_sources) != n or len(source_layer_strides) != n:
            raise ValueError(f"{len(layer0_sources)} sources for {n} target blocks")
        layers, planes = self.plane_addresses.shape
        layer = np.arange(layers, dtype=np.uint64)[:, None, None]
        plane = np.arange(planes, dtype=np.uint64)[None, None, :]
        pbb = np.uint64(self.plane_block_bytes)
        src0 = np.asarray(layer0_sources, dtype=np.uint64)[None, :, None]
        stride = np.asarray(source_layer_strides, dtype=np.uint64)[None, :, None]
        rows = np.empty((layers, n, planes, 3), dtype=np.uint64)
        rows[..., 0] = src0 + layer * stride + plane * pbb
        rows[..., 1] = (
            self.plane_addresses[:, None, :]
            + (self.block_ids * np.uint64(self.block_stride))[None, :, None]
        )
        rows[..., 2] = pbb
        return rows.reshape(layers, n * planes, 3)


def parse_engine_target(
    msg: agent_pb2.EngineKvTarget, layout: BlockLayout, blocks: int, field: str = "engine_target"
) -> EngineTarget:
    """Check an EngineKvTarget against the load's layout and block count (ValueError names
    the field)."""
    if not msg.agent_metadata:
        raise ValueError(f"{field}.agent_metadata is required")
    if msg.mem_type not in MEM_TYPES:
        raise ValueError(f"{field}.mem_type must be DRAM or VRAM, got {msg.mem_type!r}")
    if not msg.transfer_id:
        raise ValueError(f"{field}.transfer_id is required")
    if msg.planes < 1:
        raise ValueError(f"{field}.planes must be >= 1")
    if len(msg.plane_addresses) != layout.layers * msg.planes:
        raise ValueError(
            f"{field}.plane_addresses has {len(msg.plane_addresses)} entries; layers x planes "
            f"= {layout.layers} x {msg.planes} expected"
        )
    layer_block = layout.block_tokens * layout.bytes_per_token_layer
    if msg.plane_block_bytes * msg.planes != layer_block:
        raise ValueError(
            f"{field}.plane_block_bytes x planes = {msg.plane_block_bytes} x {msg.planes} does "
            f"not match a Layer Block of {layer_block} bytes (layout)"
        )
    if msg.block_stride < msg.plane_block_bytes:
        raise ValueError(f"{field}.block_stride {msg.block_stride} < plane_block_bytes")
    if len(msg.block_ids) != blocks:
        raise ValueError(f"{field}.block_ids has {len(msg.block_ids)} entries for {blocks} blocks")
    if len(set(msg.block_ids)) != len(msg.block_ids):
        raise ValueError(f"{field}.block_ids repeats an engine block")
    return EngineTarget(
        agent_name=msg.agent_name,
        agent_metadata=bytes(msg.agent_metadata),
        mem_type=msg.mem_type,
        plane_addresses=np.asarray(msg.plane_addresses, dtype=np.uint64).reshape(
            layout.layers, msg.planes
        ),
        plane_block_bytes=msg.plane_block_bytes,
        block_stride=msg.block_stride,
        block_ids=np.asarray(msg.block_ids, dtype=np.uint64),
        transfer_id=msg.transfer_id,
    )


def layer_tag(transfer_id: str, layer: int, part: str, group: int, groups: int) -> bytes:
    """The notification that follows layer `layer` of group `group` (of `groups`) of one
    part of a load into an engine."""
    return f"{transfer_id}:{layer}:{part}:{group}:{groups}".encode()


@dataclass(frozen=True)
class LayerTag:
    transfer_id: str
    layer: int
    part: str
    group: int
    groups: int


def parse_tag(tag: bytes) -> LayerTag | None:
    """A layer_tag read back; None for any other notification."""
    try:
        transfer_id, layer, part, group, groups = tag.decode().rsplit(":", 4)
        parsed = LayerTag(transfer_id, int(layer), part, int(group), int(groups))
    except (UnicodeDecodeError, ValueError):
        return None
    if parsed.part not in (LOCAL_PART, REMOTE_PART) or not 0 <= parsed.group < parsed.groups:
        return None
    return parsed


@dataclass
class LayerArrivals:
    """The engine's view of one load: which parts write into it, and how many of each
    layer's groups have landed. A layer is usable once every part delivered all groups."""

    layers: int
    parts: tuple[str, ...]
    _seen: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    _groups: dict[str, int] = field(default_factory=dict)

    def add(self, tag: LayerTag) -> None:
        if tag.part not in self.parts or not 0 <= tag.layer < self.layers:
            return
        self._groups[tag.part] = tag.groups
        self._seen.setdefault((tag.part, tag.layer), set()).add(tag.group)

    def layer_ready(self, layer: int) -> bool:
        return all(
            part in self._groups and len(self._seen.get((part, layer), ())) == self._groups[part]
            for part in self.parts
        )

    def layers_ready(self) -> int:
        """Leading layers that are usable."""
        n = 0
        while n < self.layers and self.layer_ready(n):
            n += 1
        return n


def load_parts(local_blocks: int, remote_blocks: int) -> tuple[str, ...]:
    """The parts a load of that many local and decode-side blocks writes."""
    return tuple(
        part for part, n in ((LOCAL_PART, local_blocks), (REMOTE_PART, remote_blocks)) if n
    )
