"""Per-step work the scheduler side hands to the workers (vLLM's KVConnectorMetadata):
typed jobs, one per request, never dicts read back by key."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualpath_agent.blockhash import ChainedBlock
from dualpath_agent.validation import de_block_count

from dualpath_vllm.params import ReadPathName

try:  # the real base class inside vLLM; a plain object where vLLM is absent (unit tests)
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
except ImportError:  # pragma: no cover - exercised only without vLLM
    KVConnectorMetadata = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class LoadJob:
    """Load cached blocks into these engine blocks before this step's attention."""

    request_id: str
    blocks: list[ChainedBlock]
    block_ids: list[int]
    read_path: ReadPathName
    de_read_fraction: float
    decode_agent_endpoint: str
    # A P/D hand-off on the decode side (not a storage-NIC read).
    handoff: bool
    # vLLM parks the request until get_finished reports the load (load_mode "async").
    asynchronous: bool = False
    # 2 for the retry of a failed load (from the node's own storage).
    attempt: int = 1

    @property
    def remote_blocks(self) -> int:
        """Blocks the decode-side agent writes (the agent's own rule)."""
        return de_block_count(self.read_path.proto, self.de_read_fraction, len(self.blocks))


@dataclass(frozen=True)
class SaveJob:
    """Persist these full blocks, computed in this step, through an agent."""

    request_id: str
    blocks: list[ChainedBlock]
    block_ids: list[int]
    agent_endpoint: str


@dataclass
class DualPathMetadata(KVConnectorMetadata):  # type: ignore[misc]
    loads: list[LoadJob] = field(default_factory=list)
    saves: list[SaveJob] = field(default_factory=list)
