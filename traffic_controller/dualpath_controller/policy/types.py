"""The data the policy core decides on. Pure values: no I/O, no clocks.

The gRPC server and the simulator both hold a `ClusterView` (see `view.py`), feed it
registrations and load reports, and call a policy's `schedule(view, request)`;
`view.apply(assignment, request)` then books the assigned load so the next decision sees it
(the paper updates tok_e after each assignment). Release with `view.release(request_id)` on
Complete/Cancel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualpath_controller.policy.view import ClusterView

# A request longer than this is rejected as absurd (the paper's longest context is 64K; the
# largest production contexts are ~1M tokens).
MAX_REQUEST_TOKENS = 1 << 24
# KV bytes per token above this are absurd (Qwen2.5-32B FP16 is 256 KiB).
MAX_KV_BYTES_PER_TOKEN = 1 << 24


class Role(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"

    # Members are singletons: identity hashing is correct and ~2x faster than Enum's
    # name-based __hash__ (the view indexes by role on every booking).
    __hash__ = object.__hash__


class ReadPath(enum.Enum):
    PE_READ = "pe_read"
    DE_READ = "de_read"
    SPLIT = "split"


@dataclass
class EngineState:
    """One engine (one GPU). Mutate it only through `ClusterView` methods: the view keeps
    indexes (engines sorted by tokens, group totals) that direct writes would corrupt."""

    engine_id: str
    role: Role
    node: str
    # Decode group (paper §6); defaults to the node.
    group: str = ""
    hbm_capacity_tokens: int = 0
    # seq_e, tok_e: unfinished requests and their tokens (reported + booked).
    unfinished_requests: int = 0
    unfinished_tokens: int = 0
    # Free HBM for KV cache, in tokens. A decode engine needs room for a request to get it.
    free_hbm_tokens: int = 0
    # Drained engines get no new work (missed reports, deregistering).
    drained: bool = False

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.node


@dataclass
class NodeState:
    """A node's storage NIC (SNIC) read queue, shared by all engines on the node."""

    node: str
    # read_q: reads queued on the node's storage NIC: requests, their tokens and bytes.
    # The paper's alpha rule and path rule compare read_queue_tokens.
    read_queue_length: int = 0
    read_queue_tokens: int = 0
    read_queue_bytes: int = 0
    snic_inflight_bytes: int = 0
    # Storage NIC read bandwidth, bytes/s (0 = unknown: policies use their default).
    snic_read_bytes_per_s: float = 0.0


def _check_count(name: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > limit:
        raise ValueError(f"{name}={value} is absurd (limit {limit})")


@dataclass(frozen=True)
class Request:
    """One inference request (one agent turn). Construction validates it (ValueError naming
    the field), so a policy never sees an impossible request."""

    request_id: str
    # len(r): prompt tokens (cached + appended).
    total_tokens: int
    # Tokens whose KV is loaded from storage.
    cached_tokens: int
    # Tokens the prefill engine computes.
    append_tokens: int
    expected_output_tokens: int = 0
    # KV bytes per token (all layers); 0 = unknown (byte-based rules fall back to tokens).
    kv_bytes_per_token: int = 0
    # The prefill engines (ids) the request may go to; empty = any. A gateway's endpoint
    # picker restricts a request to the endpoints the gateway allows (its subset hint).
    prefill_candidates: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError("request_id must be a non-empty string")
        _check_count("total_tokens", self.total_tokens, MAX_REQUEST_TOKENS)
        _check_count("cached_tokens", self.cached_tokens, MAX_REQUEST_TOKENS)
        _check_count("append_tokens", self.append_tokens, MAX_REQUEST_TOKENS)
        _check_count("expected_output_tokens", self.expected_output_tokens, MAX_REQUEST_TOKENS)
        _check_count("kv_bytes_per_token", self.kv_bytes_per_token, MAX_KV_BYTES_PER_TOKEN)
        if self.total_tokens == 0:
            raise ValueError("total_tokens must be > 0")
        if self.cached_tokens > self.total_tokens:
            raise ValueError(
                f"cached_tokens ({self.cached_tokens}) > total_tokens ({self.total_tokens})"
            )
        if self.cached_tokens + self.append_tokens > self.total_tokens:
            raise ValueError(
                f"cached_tokens + append_tokens ({self.cached_tokens + self.append_tokens})"
                f" > total_tokens ({self.total_tokens})"
            )

    def may_prefill_on(self, engine_id: str) -> bool:
        """Whether the request's candidate restriction (if any) allows this prefill engine."""
        return not self.prefill_candidates or engine_id in self.prefill_candidates

    @property
    def cached_bytes(self) -> int:
        return self.cached_tokens * self.kv_bytes_per_token

    @property
    def hbm_tokens(self) -> int:
        """HBM a decode engine must have free for this request (prompt + expected output)."""
        return self.total_tokens + self.expected_output_tokens


@dataclass(frozen=True)
class EngineScore:
    # Engine (or group/node, for group and path rules) the number is about.
    engine_id: str
    # Machine-readable rule label, e.g. "pe-preferred", "de-under-z", "z-threshold".
    rule: str
    value: float


@dataclass(frozen=True)
class Assignment:
    request_id: str
    prefill_engine_id: str
    decode_engine_id: str
    read_path: ReadPath
    # Fraction of cached bytes read on the decode side: DE_READ=1, PE_READ=0, SPLIT in (0,1).
    de_read_fraction: float
    policy: str
    reason: str
    scores: tuple[EngineScore, ...] = ()

    @property
    def pe_read_fraction(self) -> float:
        return 1.0 - self.de_read_fraction


class NoCapacity(Exception):
    """No engine can take the request now (all drained, overloaded or out of HBM)."""


def __getattr__(name: str) -> object:
    # ClusterView lives in view.py (which imports this module); re-exported lazily here so
    # `from dualpath_controller.policy.types import ClusterView` keeps working.
    if name == "ClusterView":
        from dualpath_controller.policy.view import ClusterView

        return ClusterView
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_REQUEST_TOKENS",
    "Assignment",
    "ClusterView",
    "EngineScore",
    "EngineState",
    "NoCapacity",
    "NodeState",
    "ReadPath",
    "Request",
    "Role",
]
