"""Deterministic synthetic KV bytes: the stand-in for what a model would compute.

The content of a block is a pure function of its hash and geometry, so any party (a test,
the demo, the benchmark, the agent emulating a prefill) can produce or check the exact
bytes of any block without shipping them around. Bytes are pseudo-random (PCG64), so a
misplaced or stale layer is always detected.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dualpath_agent.layout import BlockLayout


def _rng(seed_material: bytes) -> np.random.Generator:
    seed = int.from_bytes(hashlib.blake2b(seed_material, digest_size=16).digest(), "little")
    return np.random.Generator(np.random.PCG64(seed))


def layer_bytes(block_hash: bytes, layer: int, tokens: int, bytes_per_token_layer: int) -> bytes:
    """Layer `layer` of the block: tokens x bytes_per_token_layer bytes."""
    return _rng(block_hash + layer.to_bytes(4, "little")).bytes(tokens * bytes_per_token_layer)


def block_bytes(block_hash: bytes, layout: BlockLayout, tokens: int) -> bytes:
    """Dense Full Block [layers, tokens, bytes_per_token_layer]."""
    return b"".join(
        layer_bytes(block_hash, i, tokens, layout.bytes_per_token_layer)
        for i in range(layout.layers)
    )


def tail_layer_bytes(seed: bytes, layer: int, tokens: int, bytes_per_token_layer: int) -> bytes:
    """KV of tokens that do not form a full block (not persisted), seeded by the caller."""
    return _rng(b"tail:" + seed + layer.to_bytes(4, "little")).bytes(tokens * bytes_per_token_layer)
