"""Block identity, the block file format and the block store (real files in tmp_path)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from dualpath_agent import kvgen
from dualpath_agent.blockfile import (
    BlockFormatError,
    ChecksumMismatch,
    build_image,
    decode_header,
    encode_header,
    verify_image,
)
from dualpath_agent.blockhash import HASH_BYTES, block_chain, chain_hash, root_hash
from dualpath_agent.layout import HEADER_BYTES, BlockLayout, RegionLayout, align_up
from dualpath_agent.store import (
    BlockCorrupt,
    BlockNotFound,
    BlockStore,
    LayoutMismatch,
    StoreFaults,
    StoreFull,
)

LAYOUT = BlockLayout(layers=4, block_tokens=16, bytes_per_token_layer=256)  # 4 KiB layers
ODD = BlockLayout(layers=3, block_tokens=16, bytes_per_token_layer=656)  # unaligned layers


def _blocks(n: int, layout: BlockLayout = LAYOUT, seed: int = 0) -> list:
    tokens = np.random.default_rng(seed).integers(0, 50_000, n * layout.block_tokens)
    return block_chain(tokens, layout.block_tokens)


def _put(store: BlockStore, block, layout: BlockLayout = LAYOUT) -> bool:
    data = kvgen.block_bytes(block.block_hash, layout, block.tokens)
    return store.put(block.block_hash, block.parent_hash, layout, block.tokens, data)


# ----- hashing ----------------------------------------------------------------------------
def test_chain_hash_depends_on_parent_and_tokens():
    a = chain_hash(b"", [1, 2, 3])
    assert len(a) == HASH_BYTES
    assert chain_hash(b"", [1, 2, 3]) == a
    assert chain_hash(b"", [1, 2, 4]) != a
    assert chain_hash(a, [1, 2, 3]) != a
    assert root_hash("model-a") != root_hash("model-b")


def test_block_chain_shares_prefixes_and_drops_partial_tail():
    base = list(range(100))
    one = block_chain(base, 16)
    two = block_chain([*base[:64], 999, *base[65:]], 16)
    assert len(one) == 6  # 96 tokens in full blocks, 4 left out
    assert [b.block_hash for b in one[:4]] == [b.block_hash for b in two[:4]]
    assert one[4].block_hash != two[4].block_hash  # diverges at token 64
    assert one[1].parent_hash == one[0].block_hash
    with_tail = block_chain(base, 16, include_partial=True)
    assert with_tail[-1].tokens == 4 and with_tail[-1].first_token == 96


def test_chain_hash_rejects_bad_parent():
    with pytest.raises(ValueError, match="parent hash"):
        chain_hash(b"short", [1])


# ----- file format --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [LAYOUT, ODD])
def test_image_roundtrip_and_alignment(layout):
    block = _blocks(1, layout)[0]
    data = kvgen.block_bytes(block.block_hash, layout, block.tokens)
    header, pieces = build_image(
        block.block_hash, block.parent_hash, layout, block.tokens, memoryview(data)
    )
    image = memoryview(b"".join(pieces))
    assert len(image) == layout.file_bytes(block.tokens) == header.file_bytes
    assert header.layer_stride % 4096 == 0
    assert verify_image(image, block.block_hash) == header
    for layer in range(layout.layers):
        start = header.layer_offset(layer)
        lb = layout.layer_bytes(block.tokens)
        assert bytes(image[start : start + lb]) == data[layer * lb : (layer + 1) * lb]


def test_header_detects_corruption():
    block = _blocks(1)[0]
    data = kvgen.block_bytes(block.block_hash, LAYOUT, block.tokens)
    header, _ = build_image(block.block_hash, b"", LAYOUT, block.tokens, memoryview(data))
    page = bytearray(encode_header(header))
    assert decode_header(bytes(page)) == header
    page[20] ^= 0x01
    with pytest.raises(BlockFormatError, match="header checksum"):
        decode_header(bytes(page))
    with pytest.raises(BlockFormatError, match="magic"):
        decode_header(b"\0" * HEADER_BYTES)


def test_verify_image_names_the_corrupt_layer():
    block = _blocks(1)[0]
    data = kvgen.block_bytes(block.block_hash, LAYOUT, block.tokens)
    header, pieces = build_image(block.block_hash, b"", LAYOUT, block.tokens, memoryview(data))
    image = bytearray(b"".join(pieces))
    image[header.layer_offset(2) + 100] ^= 0xFF
    with pytest.raises(ChecksumMismatch) as err:
        verify_image(memoryview(image), block.block_hash)
    assert err.value.layer == 2


def test_build_image_rejects_wrong_size():
    with pytest.raises(ValueError, match="layout needs"):
        build_image(b"h" * 16, b"", LAYOUT, 16, memoryview(b"x" * 100))


def test_region_layout_is_layer_major():
    rl = RegionLayout(layers=3, total_tokens=10, bytes_per_token_layer=8)
    assert rl.layer_stride == 80 and rl.nbytes == 240
    assert rl.offset(2, 5) == 2 * 80 + 5 * 8
    assert align_up(1) == 4096 and align_up(4096) == 4096


# ----- store ----------------------------------------------------------------------------------
def test_put_read_and_layer_read(tmp_path):
    store = BlockStore(tmp_path)
    blocks = _blocks(3)
    assert all(_put(store, b) for b in blocks)
    assert not _put(store, blocks[0])  # content-addressed: already present
    for b in blocks:
        full = kvgen.block_bytes(b.block_hash, LAYOUT, b.tokens)
        header, data = store.read_block(b.block_hash)
        assert data == full and header.parent_hash == b.parent_hash
        _, layer2 = store.read_block(b.block_hash, layer=2)
        lb = LAYOUT.layer_bytes(b.tokens)
        assert layer2 == full[2 * lb : 3 * lb]
    assert store.lookup([blocks[0].block_hash, b"\1" * 16]) == [True, False]
    with pytest.raises(BlockNotFound):
        store.read_block(b"\1" * 16)
    with pytest.raises(LayoutMismatch):
        store.read_block(blocks[0].block_hash, layout=BlockLayout(4, 16, 512))


def test_layer_read_does_not_read_other_layers(tmp_path):
    """Corrupting layer 3 leaves layer 1 readable: a Layer Block read only touches its
    header page and its own range (and then the whole-block read fails and quarantines)."""
    store = BlockStore(tmp_path)
    block = _blocks(1)[0]
    _put(store, block)
    path = store.path_for(block.block_hash)
    header = store.read_header(block.block_hash)
    with open(path, "r+b") as f:
        f.seek(header.layer_offset(3) + 7)
        f.write(b"\xff\xfe")
    _, layer1 = store.read_block(block.block_hash, layer=1)
    assert len(layer1) == LAYOUT.layer_bytes(block.tokens)
    with pytest.raises(BlockCorrupt, match="layer 3"):
        store.read_block(block.block_hash)
    assert not store.contains(block.block_hash)  # quarantined, never served again
    assert list(path.parent.glob("*.corrupt"))
    assert store.stats().checksum_failures == 1


def test_truncated_file_is_detected(tmp_path):
    store = BlockStore(tmp_path)
    block = _blocks(1)[0]
    _put(store, block)
    path = store.path_for(block.block_hash)
    os.truncate(path, path.stat().st_size - 4096)
    with pytest.raises(BlockCorrupt, match="bytes"):
        store.read_block(block.block_hash, layer=0)


def test_rebuild_restores_index_and_removes_dead_temp_files(tmp_path):
    store = BlockStore(tmp_path)
    blocks = _blocks(4)
    for b in blocks:
        _put(store, b)
    sub = store.path_for(blocks[0].block_hash).parent
    dead = sub / f".{blocks[0].block_hash.hex()}.{os.uname().nodename}.999999999.abcd.tmp"
    dead.write_bytes(b"partial")
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "README").write_text("not a block")
    fresh = BlockStore(tmp_path)
    report = fresh.rebuild()
    assert report.blocks == 4 and report.temp_removed == 1 and "README" in report.ignored
    assert not dead.exists()
    assert fresh.stats().bytes_used == sum(LAYOUT.file_bytes(b.tokens) for b in blocks)
    assert fresh.read_block(blocks[3].block_hash)[1] == kvgen.block_bytes(
        blocks[3].block_hash, LAYOUT, blocks[3].tokens
    )


def test_lru_eviction_skips_pinned_blocks(tmp_path):
    size = LAYOUT.file_bytes(16)
    store = BlockStore(tmp_path, capacity_bytes=3 * size)
    a, b, c, d, e = _blocks(5)
    for blk in (a, b, c):
        _put(store, blk)
    store.lookup([a.block_hash])  # a is now most recently used
    with store.pinned([b.block_hash]):
        _put(store, d)  # evicts c? no: b is pinned, oldest unpinned is c
        assert store.lookup([a.block_hash, b.block_hash, c.block_hash, d.block_hash]) == [
            True,
            True,
            False,
            True,
        ]
        with store.pinned([a.block_hash, d.block_hash]), pytest.raises(StoreFull, match="pinned"):
            _put(store, e)
    _put(store, e)  # unpinned now: b (oldest) goes
    assert not store.contains(b.block_hash)
    assert store.stats().evictions == 2
    assert store.stats().bytes_used <= 3 * size


def test_block_larger_than_capacity_is_refused(tmp_path):
    store = BlockStore(tmp_path, capacity_bytes=4096)
    with pytest.raises(StoreFull, match="exceeds"):
        _put(store, _blocks(1)[0])


def test_injected_enospc_leaves_no_partial_file(tmp_path):
    store = BlockStore(tmp_path, faults=StoreFaults(enospc_after_bytes=10_000))
    block = _blocks(1)[0]
    with pytest.raises(StoreFull, match="disk full"):
        _put(store, block)
    assert not store.contains(block.block_hash)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []
    assert store.stats().bytes_used == 0


def test_concurrent_puts_of_the_same_block_store_it_once(tmp_path):
    store = BlockStore(tmp_path)
    block = _blocks(1)[0]
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(_put(store, block))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.stats().blocks == 1
    assert store.read_block(block.block_hash)[1] == kvgen.block_bytes(
        block.block_hash, LAYOUT, block.tokens
    )


def test_shared_directory_sees_other_writers(tmp_path):
    one, two = BlockStore(tmp_path), BlockStore(tmp_path)
    a, b = _blocks(2)
    _put(one, a)
    assert two.contains(a.block_hash)  # a miss probes the disk
    _put(one, b)
    assert two.rescan() >= 1
    assert two.stats().blocks == 2
    one.delete(a.block_hash)
    two.rescan()
    assert not two.contains(a.block_hash)


def test_a_block_hard_linked_in_by_another_process_is_found_by_probing(tmp_path):
    # Another process builds a block file outside the store (same filesystem) and hard-links
    # it into place; this store never indexed it, and must find it on the miss (no rescan).
    store = BlockStore(tmp_path / "store")
    (block,) = _blocks(1, seed=7)
    assert not store.contains(block.block_hash)
    script = (
        "import sys, os, numpy as np\n"
        "from pathlib import Path\n"
        "from dualpath_agent import kvgen\n"
        "from dualpath_agent.blockhash import block_chain\n"
        "from dualpath_agent.layout import BlockLayout\n"
        "from dualpath_agent.store import BlockStore\n"
        "layout = BlockLayout(layers=4, block_tokens=16, bytes_per_token_layer=256)\n"
        "tokens = np.random.default_rng(7).integers(0, 50_000, 16)\n"
        "(b,) = block_chain(tokens, 16)\n"
        "private = BlockStore(Path(sys.argv[1]))\n"
        "private.put(b.block_hash, b.parent_hash, layout, b.tokens,\n"
        "            kvgen.block_bytes(b.block_hash, layout, b.tokens))\n"
        "target = BlockStore(Path(sys.argv[2])).path_for(b.block_hash)\n"
        "target.parent.mkdir(parents=True, exist_ok=True)\n"
        "os.link(private.path_for(b.block_hash), target)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "private"), str(tmp_path / "store")],
        check=True,
        timeout=60,
    )
    assert os.stat(store.path_for(block.block_hash)).st_nlink == 2
    assert store.contains(block.block_hash)  # found by the probe on miss
    assert store.lookup([block.block_hash]) == [True]
    assert store.read_block(block.block_hash)[1] == kvgen.block_bytes(
        block.block_hash, LAYOUT, block.tokens
    )
    assert store.read_block(block.block_hash, layer=2)[1] == kvgen.layer_bytes(
        block.block_hash, 2, block.tokens, LAYOUT.bytes_per_token_layer
    )
