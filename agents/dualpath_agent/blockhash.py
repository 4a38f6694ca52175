"""Block identity: a prefix-chained hash of token ids (like vLLM / LMCache block hashes).

hash(block k) = blake2b-128(hash(block k-1) || token ids of block k as little-endian uint32).
Two prompts that share their first k blocks of tokens share the first k hashes, so the
stored blocks form a trie of prefixes and a shared prefix is stored once. The chain's root
(the parent of block 0) folds in the model's namespace and the request's cache salt: only
prompts with the same namespace and salt share blocks (tenant isolation).
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


# blake2b personalization of salted roots: a salted root is a different function of its
# input than an unsalted one, so no (namespace, salt) can produce an unsalted namespace's root.
SALTED_ROOT_PERSON = b"dualpath-salt-v1"


def root_hash(namespace: str, salt: str | None = None) -> bytes:
    """A chain root that separates namespaces (one per model) and, within one, tenants.

    `salt` is a request's cache salt (vLLM's `cache_salt`): every block hash of a salted
    prompt descends from a root no other salt and no unsalted prompt has, so tenants with
    different salts never find, read or overwrite each other's blocks. No salt (None or "")
    gives the unsalted root, unchanged, so blocks stored before salting stay addressable.
    Namespace and salt are each length-prefixed so that no two pairs encode alike.
    """
    if not salt:
        return hashlib.blake2b(namespace.encode(), digest_size=HASH_BYTES).digest()
    h = hashlib.blake2b(digest_size=HASH_BYTES, person=SALTED_ROOT_PERSON)
    for part in (namespace.encode(), salt.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


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
