"""How many of a prompt's leading tokens are in the KV store (the cached prefix).

The prompt's full blocks are hashed as a chain rooted at the model's namespace and the
request's cache salt (the addressing the engines' connectors store blocks under: a salted
prompt shares no block with another salt's or an unsalted one) and one agent is asked for
the longest present prefix. The store is shared (every node sees every block), so any
agent can answer; the prefill engines' agents are asked in turn. An unreachable agent is
logged and the prompt counted as not cached: the request is still served, only scheduled
as a cold one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor

import grpc
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.client import AgentClient
from dualpath_common import tls

from dualpath_router.metrics import RouterMetrics

log = logging.getLogger("dualpath.router.prefix")
MAX_TRIES = 2
NO_AGENT = "none"  # the agent label of lookups that had no agent to ask
WARN_EVERY_S = 10.0


class PrefixLookup:
    def __init__(
        self,
        agent_endpoints: Sequence[str],
        block_tokens: int,
        hash_namespace: str,
        executor: Executor,
        metrics: RouterMetrics,
        timeout_s: float = 2.0,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        self.block_tokens = block_tokens
        self.hash_namespace = hash_namespace
        self.root = root_hash(hash_namespace)
        self.executor = executor
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.identity = identity
        # One client (one channel) per distinct agent, shared by all lookups.
        self.agents: list[AgentClient] = []
        self._next = itertools.count()
        # Agents failing now -> when that was last logged as a warning.
        self._failing: dict[str, float] = {}
        self.set_agents(agent_endpoints)

    def set_agents(self, agent_endpoints: Sequence[str]) -> None:
        """Ask these agents from now on (the prefill engines' agents changed); with none,
        every prompt counts as not cached."""
        kept = {a.endpoint: a for a in self.agents}
        wanted = list(dict.fromkeys(agent_endpoints))
        self.agents = [
            kept.pop(ep) if ep in kept else AgentClient(ep, self.timeout_s, identity=self.identity)
            for ep in wanted
        ]
        for agent in kept.values():
            agent.close()

    def close(self) -> None:
        for agent in self.agents:
            agent.close()

    async def cached_tokens(
        self, token_ids: Sequence[int], request_id: str = "", cache_salt: str | None = None
    ) -> int:
        root = root_hash(self.hash_namespace, cache_salt) if cache_salt else self.root
        chain = block_chain(token_ids, self.block_tokens, parent=root)
        agents = self.agents
        if not chain:
            return 0
        if not agents:  # no prefill engine (yet): nobody to ask, counted like a failure
            self._failed(NO_AGENT, None, request_id)
            return 0
        loop = asyncio.get_running_loop()
        start = next(self._next)
        # The next agent is asked when one fails (at most two: a dead agent must not cost
        # every request one timeout per agent).
        for agent in [agents[(start + i) % len(agents)] for i in range(MAX_TRIES)]:
            try:
                prefix_blocks, _ = await loop.run_in_executor(self.executor, agent.lookup, chain)
            except grpc.RpcError as exc:
                self._failed(agent.endpoint, exc, request_id)
                continue
            self._failing.pop(agent.endpoint, None)
            return min(prefix_blocks, len(chain)) * self.block_tokens
        return 0

    def _failed(self, endpoint: str, exc: grpc.RpcError | None, request_id: str) -> None:
        """Count every failure; log a failing agent when it starts failing, then once per
        WARN_EVERY_S. `exc` None: there was no agent to ask."""
        code = exc.code().name if exc is not None else "NO_AGENT"
        self.metrics.lookup_failures.labels(endpoint, code).inc()
        now = time.monotonic()
        last = self._failing.get(endpoint)
        level = logging.WARNING if last is None or now - last >= WARN_EVERY_S else logging.DEBUG
        if level == logging.WARNING:
            self._failing[endpoint] = now
        log.log(
            level,
            "prefix lookup failed: the prompt counts as not cached",
            extra={
                "request_id": request_id,
                "agent": endpoint,
                "code": code,
                "details": exc.details() if exc is not None else "no prefill engine's agent",
            },
        )
