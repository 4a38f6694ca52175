"""Where one block of a request sits in the request's layer-major region."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BlockPlan:
    """One block of a request: where its tokens sit in the request region."""

    block_hash: bytes
    parent_hash: bytes
    tokens: int
    first_token: int
