"""The engines behind the router: one HTTP client pool, and per engine its load polling
and reporting to the traffic controller.

Each engine's monitor polls its vLLM /metrics (and its node agent's Stat for the storage
read queue) and, when the poll succeeded, sends one load report through the controller
client's `EngineReporter` (which registers the engine first, and registers it again when
the controller answers FAILED_PRECONDITION: a restarted controller learns the cluster back
this way). The monitor drives `report_once` from the event loop instead of starting the
reporter's own thread, so that an engine that does not answer is not reported: the
controller then drains it after its liveness timeout, and takes it back with the next
report. The report interval is the one RegisterEngine returned.

The router's own unfinished requests per engine are counted here too (`routed`): a load
report replaces what the controller booked, so it never reports fewer than those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc
import httpx
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_agent.client import AgentClient
from dualpath_common import tls
from dualpath_controller.client import ControllerClient, EngineLoad, EngineReporter
from dualpath_controller.convert import ROLE_TO_PROTO, parse_role

from dualpath_router.config import EngineSpec, RouterConfig
from dualpath_router.metrics import RouterMetrics
from dualpath_router.vllm_metrics import (
    MetricsFormatError,
    NodeQueue,
    VllmStats,
    engine_load,
    parse_vllm_metrics,
)

log = logging.getLogger("dualpath.router.engines")


@dataclass
class EngineState:
    """What the router knows of one engine right now."""

    spec: EngineSpec
    up: bool = False
    # Why the engine is not up (empty when it is).
    problem: str = "not polled yet"
    stats: VllmStats | None = None
    capacity_tokens: int = 0
    # Unfinished requests the router sent to it, and their prompt tokens.
    routed_requests: int = 0
    routed_tokens: int = 0
    # Last load report: accepted by the controller, or why not.
    reported: bool = False
    report_problem: str = "no report sent yet"
    last_report_at: float = 0.0
    node_queue: NodeQueue = field(default_factory=NodeQueue)

    def load(self) -> EngineLoad:
        assert self.stats is not None
        return engine_load(
            self.stats,
            self.capacity_tokens,
            routed_requests=self.routed_requests,
            routed_tokens=self.routed_tokens,
            node=self.node_queue,
        )


def engine_message(spec: EngineSpec) -> pb.Engine:
    return pb.Engine(
        engine_id=spec.id,
        role=ROLE_TO_PROTO[parse_role(spec.role)],
        node=spec.node,
        group=spec.group,
        hbm_capacity_tokens=spec.hbm_tokens or 0,
        agent_endpoint=spec.agent,
    )


class EngineMonitor:
    """Polls one engine and reports its load (see the module docstring)."""

    def __init__(
        self,
        state: EngineState,
        http: httpx.AsyncClient,
        controller: ControllerClient,
        agent: AgentClient,
        executor: Executor,
        metrics: RouterMetrics,
        default_interval_s: float,
    ) -> None:
        self.state = state
        self.http = http
        self.agent = agent
        self.executor = executor
        self.metrics = metrics
        self.default_interval_s = default_interval_s
        self.reporter = EngineReporter(controller, engine_message(state.spec), state.load)
        self._up = metrics.engine_up.labels(state.spec.id, state.spec.role)

    @property
    def interval_s(self) -> float:
        return self.reporter.interval_s or self.default_interval_s

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def poll_once(self) -> None:
        state = self.state
        spec = state.spec
        try:
            reply = await self.http.get(f"{spec.url}/metrics")
            reply.raise_for_status()
            stats = parse_vllm_metrics(reply.text)
        except (httpx.HTTPError, MetricsFormatError) as exc:
            self._mark_down(f"metrics of {spec.url}: {type(exc).__name__}: {exc}")
            return
        capacity = spec.hbm_tokens or stats.kv_capacity_tokens
        if not capacity:
            self._mark_down(
                f"KV capacity unknown: {spec.url}/metrics has no vllm:cache_config_info"
                " with num_gpu_blocks and block_size; give hbm_tokens in the engine spec"
            )
            return
        if not state.up:
            log.info("engine up", extra={"engine": spec.id, "capacity_tokens": capacity})
        state.up, state.problem, state.stats = True, "", stats
        state.capacity_tokens = capacity
        self._up.set(1)
        await self._refresh_node()
        await self._report()

    def _mark_down(self, problem: str) -> None:
        state = self.state
        if state.up or state.problem != problem:
            log.warning("engine down", extra={"engine": state.spec.id, "problem": problem})
        state.up, state.problem = False, problem
        self._up.set(0)

    async def _refresh_node(self) -> None:
        """The node's read queue and storage-NIC bandwidth from its agent (kept as they were
        when the agent does not answer: a report with zeros would erase the queue)."""
        loop = asyncio.get_running_loop()
        try:
            stat = await loop.run_in_executor(self.executor, self.agent.stat)
        except grpc.RpcError as exc:
            log.debug(
                "agent stat failed", extra={"agent": self.agent.endpoint, "code": exc.code().name}
            )
            return
        self.state.node_queue = NodeQueue(
            length=stat.read_queue_length,
            tokens=stat.read_queue_tokens,
            bytes=stat.read_queue_bytes,
            snic_inflight_bytes=stat.snic_inflight_bytes,
        )
        self.reporter.engine.snic_read_bytes_per_s = stat.snic_read_bytes_per_s

    async def _report(self) -> None:
        state = self.state
        # Registration carries the capacity: known only after the first poll.
        self.reporter.engine.hbm_capacity_tokens = state.capacity_tokens
        loop = asyncio.get_running_loop()
        registrations = self.reporter.registrations
        try:
            state.reported = await loop.run_in_executor(self.executor, self.reporter.report_once)
            state.report_problem = "" if state.reported else "report was stale"
            state.last_report_at = time.monotonic()
        except grpc.RpcError as exc:
            state.reported = False
            state.report_problem = f"controller: {exc.code().name}: {exc.details()}"
            self.metrics.controller_errors.labels("report", exc.code().name).inc()
            log.debug("load report failed", extra={"engine": state.spec.id, "code": exc.code()})
        if self.reporter.registrations != registrations:
            log.info(
                "engine registered at the controller",
                extra={"engine": state.spec.id, "interval_s": self.reporter.interval_s},
            )


class EnginePool:
    """All engines: one HTTP connection pool, their states and monitors."""

    def __init__(
        self,
        config: RouterConfig,
        controller: ControllerClient,
        executor: Executor,
        metrics: RouterMetrics,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        self.config = config
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                config.engine_read_timeout_s, connect=config.engine_connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self.states = {spec.id: EngineState(spec) for spec in config.engines}
        self._agents = {
            ep: AgentClient(ep, config.agent_timeout_s, identity=identity)
            for ep in dict.fromkeys(spec.agent for spec in config.engines)
        }
        self.monitors = [
            EngineMonitor(
                state,
                httpx.AsyncClient(timeout=httpx.Timeout(config.poll_interval_s + 2.0)),
                controller,
                self._agents[state.spec.agent],
                executor,
                metrics,
                config.poll_interval_s,
            )
            for state in self.states.values()
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(m.run(), name=f"monitor-{m.state.spec.id}") for m in self.monitors
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for monitor in self.monitors:
            await monitor.http.aclose()
        await self.http.aclose()
        for agent in self._agents.values():
            agent.close()

    def get(self, engine_id: str) -> EngineState | None:
        return self.states.get(engine_id)

    def up(self) -> Iterator[EngineState]:
        return (s for s in self.states.values() if s.up)

    def add_routed(self, engine_id: str, tokens: int, requests: int = 1) -> None:
        """Count (or, with negative numbers, uncount) a request the router sent to an
        engine and that has not finished there yet."""
        state = self.states.get(engine_id)
        if state is not None:
            state.routed_requests += requests
            state.routed_tokens += tokens
