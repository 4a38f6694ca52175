"""Block identity: a prefix-chained hash of token ids (like vLLM / LMCache block hashes).

hash(block k) = blake2b-128(hash(block k-1) || token ids of block k as little-endian uint32).
Two prompts that share their first k blocks of tokens share the first k hashes, so the
stored blocks form a trie of prefixes and a shared prefix is stored once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HASH_BYTES = 16
# Parent of the first block of every chain. A model name can be folded in with `root_hash`
# so two models never share a block address for the same tokens.
EMPTY_PARENT = b""


def root_hash(namespace: str) -> bytes:
    """A chain root that separates namespaces (for example one per model)."""
    return hashlib.blake2b(namespace.encode(), digest_size=HASH_BYTES).digest()


def chain_hash(parent: bytes, token_ids: Sequence[int] | np.ndarray) -> bytes:
    """Hash of one block given its parent's hash and its own token ids."""
    if parent and len(parent) != HASH_BYTES:
        raise ValueError(f"parent hash must be {HASH_BYTES} bytes, got {len(parent)}")
    tokens = np.asarray(token_ids, dtype="<u4")
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    h.update(parent)
    h.update(tokens.tobytes())
    return h.digest()


@dataclass(frozen=True)
class ChainedBlock:
    block_hash: bytes
    parent_hash: bytes
    tokens: int
    # Index of the block's first token in the sequence.
    first_token: int


def block_chain(
    token_ids: Sequence[int] | np.ndarray,
    block_tokens: int,
    parent: bytes = EMPTY_PARENT,
    include_partial: bool = False,
) -> list[ChainedBlock]:
    """Split token ids into blocks of `block_tokens` and hash them as a chain.

    A trailing partial block is left out unless `include_partial` (prefix caches store
    full blocks only; the tail is recomputed).
    """
    if block_tokens <= 0:
        raise ValueError("block_tokens must be positive")
    ids = np.asarray(token_ids, dtype="<u4")
    blocks: list[ChainedBlock] = []
    for start in range(0, len(ids), block_tokens):
        chunk = ids[start : start + block_tokens]
        if len(chunk) < block_tokens and not include_partial:
            break
        digest = chain_hash(parent, chunk)
        blocks.append(ChainedBlock(digest, parent, len(chunk), start))
        parent = digest
    return blocks


def validate_hash(value: bytes, field: str) -> None:
    """Raise ValueError naming the field when a hash has the wrong length."""
    if len(value) != HASH_BYTES:
        raise ValueError(f"{field}: expected a {HASH_BYTES}-byte hash, got {len(value)} bytes")
