"""Conversion between the agent's domain objects and its protobuf messages, shared by the
client (callers building requests) and the service (agents calling each other)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from dualpath.v1 import agent_pb2

from dualpath_agent.blockhash import ChainedBlock
from dualpath_agent.layout import BlockLayout
from dualpath_agent.plan import BlockPlan

BlockLike: TypeAlias = ChainedBlock | BlockPlan | agent_pb2.BlockRef


def block_ref(block: BlockLike, with_token_ids: Sequence[int] | None = None) -> agent_pb2.BlockRef:
    if isinstance(block, agent_pb2.BlockRef):
        return block
    ref = agent_pb2.BlockRef(
        block_hash=block.block_hash, parent_hash=block.parent_hash, tokens=block.tokens
    )
    if with_token_ids is not None:
        ref.token_ids.extend(with_token_ids)
    return ref


def block_refs(blocks: Sequence[BlockLike]) -> list[agent_pb2.BlockRef]:
    return [block_ref(b) for b in blocks]


def layout_msg(layout: BlockLayout) -> agent_pb2.BlockLayout:
    return agent_pb2.BlockLayout(
        layers=layout.layers,
        block_tokens=layout.block_tokens,
        bytes_per_token_layer=layout.bytes_per_token_layer,
    )


def checksums_msg(
    blocks: Sequence[BlockPlan], layer_crcs: Mapping[bytes, Sequence[int]] | Sequence[Sequence[int]]
) -> list[agent_pb2.BlockChecksums]:
    """Per-layer CRC32Cs of blocks, given by block hash or in the blocks' order."""
    if isinstance(layer_crcs, Mapping):
        crcs = [layer_crcs[b.block_hash] for b in blocks]
    else:
        crcs = list(layer_crcs)
    return [
        agent_pb2.BlockChecksums(block_hash=b.block_hash, layer_crc32c=c)
        for b, c in zip(blocks, crcs, strict=True)
    ]


def layer_crcs_of(msgs: Sequence[agent_pb2.BlockChecksums]) -> dict[bytes, list[int]]:
    """The CRCs a peer sent, by block hash."""
    return {c.block_hash: list(c.layer_crc32c) for c in msgs}
