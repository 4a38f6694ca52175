"""End-to-end verification of a layer in the device tier: one CRC call over many blocks
(combined CRCs), still naming the exact block and layer when a byte is wrong."""

from __future__ import annotations

import os

import pytest
from dualpath_agent.blockfile import ChecksumMismatch, crc32c, crc32c_concat
from dualpath_agent.core import AgentConfig, AgentCore, BlockPlan
from dualpath_agent.layout import RegionLayout

BPT = 512
LAYERS = 3
TOKENS = [64, 64, 64, 17]  # a partial tail block: parts of different lengths


def test_crc32c_concat_matches_the_crc_of_the_concatenation():
    assert crc32c_concat([]) == 0
    for lengths in ([1], [7, 0, 512], [32768] * 5 + [4096 * 3, 13]):
        parts = [os.urandom(n) for n in lengths]
        combined = crc32c_concat([(crc32c(p), len(p)) for p in parts])
        assert combined == crc32c(b"".join(parts))
        parts[-1] = bytes([parts[-1][0] ^ 1]) + parts[-1][1:] if parts[-1] else parts[-1]
        if lengths[-1]:
            assert crc32c_concat([(crc32c(p), len(p)) for p in parts]) != combined


@pytest.fixture
def core(tmp_path):
    config = AgentConfig(
        "verify",
        "prefill",
        tmp_path,
        transport="fallback",
        buffer_bytes=1 << 20,
        device_bytes=1 << 20,
        device_mode="dram",
    )
    agent_core = AgentCore(config)
    yield agent_core
    agent_core.close()


def _filled_region(core: AgentCore):
    layout = RegionLayout(LAYERS, sum(TOKENS), BPT)
    region = core.device_pool.allocate(layout.nbytes)
    view = core.device_pool.host_view(region.offset, layout.nbytes)
    view[:] = os.urandom(layout.nbytes)
    blocks, first = [], 0
    for i, tokens in enumerate(TOKENS):
        blocks.append(BlockPlan(bytes([i]) * 16, b"", tokens, first))
        first += tokens
    crcs = {
        b.block_hash: [
            crc32c(view[layout.offset(layer, b.first_token) :][: b.tokens * BPT])
            for layer in range(LAYERS)
        ]
        for b in blocks
    }
    return layout, region, view, blocks, crcs


def test_region_layer_verification_passes_intact_bytes_and_names_a_corrupt_block(core):
    layout, region, view, blocks, crcs = _filled_region(core)
    with region:
        for layer in range(LAYERS):
            core.verify_region_layer(region.address, layout, layer, blocks, crcs, "peer")
        # one flipped byte in block 2, layer 1: found, and named exactly
        at = layout.offset(1, blocks[2].first_token) + 100
        view[at] ^= 0x01
        core.verify_region_layer(region.address, layout, 0, blocks, crcs, "peer")
        with pytest.raises(ChecksumMismatch) as err:
            core.verify_region_layer(region.address, layout, 1, blocks, crcs, "peer")
        assert (err.value.block_hash, err.value.layer) == (blocks[2].block_hash, 1)
        assert core.peer_checksum_failures == 1
        # the tail block alone (a single block: no combined check) is checked too
        view[at] ^= 0x01
        tail = layout.offset(2, blocks[3].first_token) + blocks[3].tokens * BPT - 1
        view[tail] ^= 0x80
        with pytest.raises(ChecksumMismatch) as err:
            core.verify_region_layer(region.address, layout, 2, blocks[3:], crcs, "peer")
        assert (err.value.block_hash, err.value.layer) == (blocks[3].block_hash, 2)
