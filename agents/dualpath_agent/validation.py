"""Checks of request fields (pure): bad input becomes a ValueError that names the field,
which the service turns into INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import Sequence

from dualpath.v1 import agent_pb2, traffic_controller_pb2

from dualpath_agent.blockhash import HASH_BYTES, chain_hash, validate_hash
from dualpath_agent.layout import BlockLayout
from dualpath_agent.plan import BlockPlan


def parse_layout(msg: agent_pb2.BlockLayout, field: str = "layout") -> BlockLayout:
    layout = BlockLayout(msg.layers, msg.block_tokens, msg.bytes_per_token_layer)
    layout.validate(field)
    return layout


def require(value: object, field: str) -> None:
    if not value:
        raise ValueError(f"{field} is required")


def check_ref(ref: agent_pb2.BlockRef, layout: BlockLayout, field: str) -> None:
    validate_hash(ref.block_hash, f"{field}.block_hash")
    if ref.parent_hash and len(ref.parent_hash) != HASH_BYTES:
        validate_hash(ref.parent_hash, f"{field}.parent_hash")
    if not 0 < ref.tokens <= layout.block_tokens:
        raise ValueError(
            f"{field}.tokens must be in 1..{layout.block_tokens} (block_tokens), got {ref.tokens}"
        )
    if ref.token_ids:
        if len(ref.token_ids) != ref.tokens:
            raise ValueError(
                f"{field}.token_ids has {len(ref.token_ids)} ids but tokens is {ref.tokens}"
            )
        if chain_hash(ref.parent_hash, list(ref.token_ids)) != ref.block_hash:
            raise ValueError(
                f"{field}.block_hash does not match the hash of parent_hash and token_ids"
            )


def plan_blocks(
    refs: Sequence[agent_pb2.BlockRef],
    layout: BlockLayout,
    field: str = "blocks",
    first_token: int = 0,
    allow_empty: bool = False,
    full_only: bool = False,
) -> list[BlockPlan]:
    """Validate a list of blocks (chained, only the last one partial) and place their tokens
    one after the other starting at `first_token`."""
    if not refs and not allow_empty:
        raise ValueError(f"{field} is empty")
    plans: list[BlockPlan] = []
    token = first_token
    seen: set[bytes] = set()
    for i, ref in enumerate(refs):
        where = f"{field}[{i}]"
        check_ref(ref, layout, where)
        if ref.block_hash in seen:
            raise ValueError(f"{where}.block_hash repeats an earlier block")
        seen.add(ref.block_hash)
        if i and ref.parent_hash != refs[i - 1].block_hash:
            raise ValueError(f"{where}.parent_hash does not chain to {field}[{i - 1}]")
        partial = ref.tokens < layout.block_tokens
        if partial and (full_only or i != len(refs) - 1):
            raise ValueError(
                f"{where} holds {ref.tokens} tokens; only the last block may be partial"
                if not full_only
                else f"{where} holds {ref.tokens} tokens; full blocks of "
                f"{layout.block_tokens} are required here"
            )
        plans.append(BlockPlan(bytes(ref.block_hash), bytes(ref.parent_hash), ref.tokens, token))
        token += ref.tokens
    return plans


def de_block_count(read_path: int, fraction: float, blocks: int) -> int:
    """How many of the request's blocks (the first ones) the decode side reads."""
    if read_path == traffic_controller_pb2.ReadPath.READ_PATH_PE_READ:
        return 0
    if read_path == traffic_controller_pb2.ReadPath.READ_PATH_DE_READ:
        return blocks
    if read_path == traffic_controller_pb2.ReadPath.READ_PATH_SPLIT:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"de_read_fraction must be in (0, 1) for SPLIT, got {fraction}")
        return min(blocks, max(0, round(fraction * blocks)))
    raise ValueError("read_path is required (PE_READ, DE_READ or SPLIT)")


def token_ranges_missing(total: int, covered: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token ranges in [0, total) not covered by the given (start, end) ranges, merged."""
    gaps: list[tuple[int, int]] = []
    cursor = 0
    for start, end in sorted(covered):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < total:
        gaps.append((cursor, total))
    return gaps


# Transfer descriptors carry addresses as signed 64-bit integers (NIXL's bindings).
MAX_ADDRESS = 2**63


def check_layer_span(
    address: int, layer_stride: int, layers: int, layer_bytes: int, field: str
) -> None:
    """A caller-given layer-major span (layer i at address + i x layer_stride, layer_bytes
    long) must end inside the address space: beyond it the descriptor arithmetic overflows
    (found by fuzzing: an OverflowError, answered INTERNAL)."""
    end = address + (layers - 1) * layer_stride + layer_bytes
    if end > MAX_ADDRESS:
        raise ValueError(
            f"{field} {address} + {layers - 1} x layer stride {layer_stride} + {layer_bytes}"
            f" bytes ends past the 63-bit address space"
        )
