"""Scheduler side of the DualPath connector (runs in vLLM's scheduler process).

- get_num_new_matched_tokens: the request's prefix-chained block hashes (store block =
  vLLM block, so the two block sizes are one) looked up at the node's agent; the blocks the
  store holds beyond what vLLM has cached itself are loaded layer by layer during the
  step's forward (a synchronous load: prefill of layer i overlaps the arrival of i+1).
- update_state_after_alloc: the vLLM blocks those tokens go to.
- build_connector_meta: this step's loads, and the full blocks this step completes, to be
  persisted through an agent (the paper persists each full block as soon as it is done).
- request_finished: forget the request (saves already happened step by step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient

from dualpath_vllm.config import ConnectorConfig
from dualpath_vllm.metadata import DualPathMetadata, LoadJob, SaveJob
from dualpath_vllm.params import DualPathParams, ReadPathName, Role
from dualpath_vllm.stats import DualPathStats

log = logging.getLogger(__name__)

MAX_LOAD_ATTEMPTS = 2


@dataclass
class TrackedRequest:
    """What the scheduler side keeps of a running request."""

    request: Any  # vllm.v1.request.Request: token ids grow as it decodes
    params: DualPathParams
    # Root of the request's hash chain: the model's namespace and the request's cache_salt
    # (tenants with different salts share no block).
    root: bytes
    block_ids: list[int] = field(default_factory=list)
    # Leading blocks known to be in the store (loaded, or saved by this engine).
    stored_blocks: int = 0
    save_endpoint: str = ""
    # Loads planned so far. vLLM asks again only when the request starts over (a failed
    # async load, a preemption): the second try reads the node's own storage, a third
    # would not load at all (the prompt is computed).
    load_attempts: int = 0


@dataclass
class LoadPlan:
    blocks: list[ChainedBlock]
    first_block: int


class DualPathScheduler:
    def __init__(self, config: ConnectorConfig, block_size: int) -> None:
        self.config = config
        self.block_size = block_size
        self.root = root_hash(config.hash_namespace)
        self.agent = AgentClient(
            config.agent_endpoint, timeout_s=config.rpc_timeout_s, identity=config.identity()
        )
        self._plans: dict[str, LoadPlan] = {}
        self._loads: list[LoadJob] = []
        self._tracked: dict[str, TrackedRequest] = {}
        # Counted since vLLM last collected them (get_stats).
        self.stats = DualPathStats()

    # ----- matching ---------------------------------------------------------------------
    def root_for(self, request: Any) -> bytes:
        """The chain root of `request`: salted by its cache_salt (vLLM's per-request field,
        also what salts vLLM's own prefix cache), the namespace's plain root without one."""
        salt = getattr(request, "cache_salt", None)
        return root_hash(self.config.hash_namespace, salt) if salt else self.root

    def chain(self, token_ids: list[int], root: bytes | None = None) -> list[ChainedBlock]:
        return block_chain(token_ids, self.block_size, parent=self.root if root is None else root)

    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int, bool]:
        params = self._params(request)
        tracked = self._tracked.setdefault(
            request.request_id,
            TrackedRequest(
                request,
                params,
                root=self.root_for(request),
                save_endpoint=self._save_endpoint(params),
            ),
        )
        prompt = list(request.prompt_token_ids or [])
        # The last prompt token is always computed: its logits give the first new token.
        chain = self.chain(prompt[: len(prompt) - 1], tracked.root)
        if not chain or tracked.load_attempts >= MAX_LOAD_ATTEMPTS:
            return 0, False
        try:
            present, _ = self.agent.lookup(chain)
        except grpc.RpcError as exc:
            # No agent: nothing is loaded and nothing is lost; the prompt is computed.
            self.stats.count("lookup_failures")
            log.warning(
                "agent lookup for %s failed, computing the prompt: %s",
                request.request_id,
                exc.details(),
                extra={"request_id": request.request_id, "error": exc.details()},
            )
            return 0, False
        tracked.stored_blocks = present
        first = num_computed_tokens // self.block_size
        if present <= first:
            self._plans.pop(request.request_id, None)
            return 0, False
        self._plans[request.request_id] = LoadPlan(chain[first:present], first)
        return (present - first) * self.block_size, self.config.load_mode == "async"

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        plan = self._plans.pop(request.request_id, None)
        if num_external_tokens <= 0 or plan is None:
            return
        block_ids = list(blocks.get_block_ids()[0])
        n = num_external_tokens // self.block_size
        targets = block_ids[plan.first_block : plan.first_block + n]
        tracked = self._tracked[request.request_id]
        params = tracked.params
        tracked.load_attempts += 1
        # The decode side reads what the prefill handed over, from its own agent; a retry
        # falls back to the node's own storage.
        own = params.role is Role.DECODE or tracked.load_attempts > 1
        if tracked.load_attempts > 1:
            self.stats.count("load_retries")
            log.warning(
                "reloading %s from the node's own storage (attempt %d)",
                request.request_id,
                tracked.load_attempts,
            )
        self._loads.append(
            LoadJob(
                request_id=request.request_id,
                blocks=plan.blocks[:n],
                block_ids=targets,
                read_path=ReadPathName.PE_READ if own else params.read_path,
                de_read_fraction=params.de_read_fraction,
                decode_agent_endpoint="" if own else params.decode_agent_endpoint,
                handoff=params.role is Role.DECODE,
                asynchronous=self.config.load_mode == "async",
                attempt=tracked.load_attempts,
            )
        )

    # ----- per step ---------------------------------------------------------------------
    def build_connector_meta(self, scheduler_output: Any) -> DualPathMetadata:
        meta = DualPathMetadata(loads=self._loads)
        self._loads = []
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            tracked = self._tracked.get(new.req_id)
            if tracked is None:
                continue
            tracked.block_ids = list(new.block_ids[0])
            self._add_save(meta, tracked, new.num_computed_tokens + scheduled.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            tracked = self._tracked.get(req_id)
            if tracked is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                tracked.block_ids = list(new_ids[0]) if new_ids else []
            elif new_ids:
                tracked.block_ids.extend(new_ids[0])
            self._add_save(meta, tracked, cached.num_computed_tokens[i] + scheduled.get(req_id, 0))
        return meta

    def _add_save(self, meta: DualPathMetadata, tracked: TrackedRequest, computed: int) -> None:
        """Full blocks whose every token's KV exists once this step has run."""
        full = min(computed // self.block_size, len(tracked.block_ids))
        if full <= tracked.stored_blocks:
            return
        tokens = list(tracked.request.all_token_ids[: full * self.block_size])
        chain = self.chain(tokens, tracked.root)
        start = tracked.stored_blocks
        meta.saves.append(
            SaveJob(
                request_id=tracked.request.request_id,
                blocks=chain[start:full],
                block_ids=tracked.block_ids[start:full],
                agent_endpoint=tracked.save_endpoint,
            )
        )
        tracked.stored_blocks = full

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        self._tracked.pop(request.request_id, None)
        self._plans.pop(request.request_id, None)
        return False, None

    # ----- helpers ----------------------------------------------------------------------
    def _params(self, request: Any) -> DualPathParams:
        try:
            return DualPathParams.from_body(getattr(request, "kv_transfer_params", None))
        except ValueError as exc:
            # A malformed hint costs the request its cache hit, never the request.
            log.warning(
                "ignoring malformed kv_transfer_params of %s: %s",
                request.request_id,
                exc,
                extra={"request_id": request.request_id, "error": str(exc)},
            )
            return DualPathParams()

    def _save_endpoint(self, params: DualPathParams) -> str:
        # The prefill hands what the decode side lacks to the decode agent; everyone else
        # (standalone, decode, and a whole request on one engine, which loads by the read
        # path like a prefill but has no decode engine to hand over to) persists through
        # the own node's agent.
        if params.role is Role.PREFILL and params.decode_agent_endpoint:
            return params.decode_agent_endpoint
        return self.config.agent_endpoint

    def get_stats(self) -> DualPathStats | None:
        if self.stats.is_empty():
            return None
        stats, self.stats = self.stats, DualPathStats()
        return stats

    def close(self) -> None:
        self.agent.close()
