"""Held records are typed per kind: a lookup by one kind never returns another's record,
and Release/expiry free every kind's buffer space."""

from __future__ import annotations

from dualpath_agent.buffer import HostBuffer
from dualpath_agent.held import HeldLoad, HeldMerged, HeldStaged, HeldTable
from dualpath_agent.layout import PAGE, BlockLayout, RegionLayout
from dualpath_agent.messages import block_refs, checksums_msg, layer_crcs_of, layout_msg
from dualpath_agent.plan import BlockPlan
from dualpath_agent.staging import Staged

LAYOUT = BlockLayout(layers=2, block_tokens=4, bytes_per_token_layer=8)
BLOCKS = [BlockPlan(b"\1" * 32, b"", 4, 0), BlockPlan(b"\2" * 32, b"\1" * 32, 4, 4)]


def _load(pool, expires_at: float) -> HeldLoad:
    return HeldLoad(
        expires_at=expires_at,
        region=pool.allocate(PAGE),
        region_layout=RegionLayout(2, 8, 8),
        layout=LAYOUT,
        blocks=BLOCKS,
        crcs={b.block_hash: [1, 2] for b in BLOCKS},
        decode_endpoint="127.0.0.1:1",
        missed_reserved=0,
        prefix_tokens=8,
    )


def test_held_records_are_found_by_their_own_kind_only():
    pool = HostBuffer(8 * PAGE, lock_pages=False).pool("host")
    table = HeldTable()
    table.put("r1", _load(pool, 100.0))
    table.put(
        "r1",
        HeldMerged(
            expires_at=100.0, region=pool.allocate(PAGE), region_layout=RegionLayout(2, 8, 8)
        ),
    )
    staged = Staged(pool.allocate(2 * PAGE), BLOCKS, [0, PAGE], [], LAYOUT)
    table.put("r1", HeldStaged(expires_at=50.0, staged=[staged]))
    held = table.get("r1", HeldLoad)
    assert held is not None and held.prefix_tokens == 8 and held.decode_endpoint == "127.0.0.1:1"
    assert table.get("r2", HeldLoad) is None
    assert table.pop("r1", HeldStaged) is not None
    assert table.get("r1", HeldStaged) is None
    staged.release()
    assert pool.free_bytes == 6 * PAGE
    kinds, freed = table.release_all_of("r1")
    assert sorted(kinds) == ["load", "merged"] and freed == 2 * PAGE
    assert pool.free_bytes == 8 * PAGE and len(table) == 0


def test_expired_records_are_released():
    pool = HostBuffer(4 * PAGE, lock_pages=False).pool("host")
    table = HeldTable()
    table.put("old", _load(pool, 10.0))
    table.put("new", _load(pool, 100.0))
    assert table.expire(50.0) == [("old", "load")]
    assert pool.free_bytes == 3 * PAGE and table.get("new", HeldLoad) is not None


def test_messages_round_trip_block_refs_layouts_and_checksums():
    refs = block_refs(BLOCKS)
    assert [(r.block_hash, r.parent_hash, r.tokens) for r in refs] == [
        (b.block_hash, b.parent_hash, b.tokens) for b in BLOCKS
    ]
    msg = layout_msg(LAYOUT)
    assert (msg.layers, msg.block_tokens, msg.bytes_per_token_layer) == (2, 4, 8)
    by_hash = {BLOCKS[0].block_hash: [5, 6], BLOCKS[1].block_hash: [7, 8]}
    sums = checksums_msg(BLOCKS, by_hash)
    assert layer_crcs_of(sums) == by_hash
    assert layer_crcs_of(checksums_msg(BLOCKS, [[5, 6], [7, 8]])) == by_hash
