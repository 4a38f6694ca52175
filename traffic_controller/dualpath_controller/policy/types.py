"""The data the policy core decides on. Pure values: no I/O, no clocks.

The gRPC server and the simulator both hold a `ClusterView`, feed it registrations and
load reports, and call a policy's `schedule(view, request)`; `view.apply(assignment,
request)` then books the assigned load so the next decision sees it (the paper updates
tok_e after each assignment). Release with `view.release(...)` on Complete/Cancel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


class ReadPath(enum.Enum):
    PE_READ = "pe_read"
    DE_READ = "de_read"
    SPLIT = "split"


@dataclass
class EngineState:
    engine_id: str
    role: Role
    node: str
    # Decode group (paper §6); defaults to the node.
    group: str = ""
    hbm_capacity_tokens: int = 0
    # seq_e, tok_e: unfinished requests and their tokens (reported + booked).
    unfinished_requests: int = 0
    unfinished_tokens: int = 0
    free_hbm_tokens: int = 0
    # Drained engines get no new work (missed reports, deregistering).
    drained: bool = False

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.node


@dataclass
class NodeState:
    node: str
    # read_q: requests queued on the node's storage NIC, and their pending bytes.
    read_queue_length: int = 0
    read_queue_bytes: int = 0
    snic_inflight_bytes: int = 0
    # Storage NIC read bandwidth, bytes/s (0 = unknown).
    snic_read_bytes_per_s: float = 0.0


@dataclass(frozen=True)
class Request:
    request_id: str
    total_tokens: int
    cached_tokens: int
    append_tokens: int
    expected_output_tokens: int = 0
    kv_bytes_per_token: int = 0

    @property
    def cached_bytes(self) -> int:
        return self.cached_tokens * self.kv_bytes_per_token


@dataclass(frozen=True)
class EngineScore:
    engine_id: str
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


class NoCapacity(Exception):
    """No engine can take the request now (all drained, overloaded or out of HBM)."""


@dataclass
class ClusterView:
    engines: dict[str, EngineState] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
