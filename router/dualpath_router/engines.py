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
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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
# Engines let go whose state stays reachable (a request holds an engine id from Schedule to
# its end, however long its prefill takes): a few KiB each.
RETIRED_KEPT = 1024


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
    """All engines: one HTTP connection pool, their states and monitors. The set can change
    while serving (`apply`, from the engines file): an engine let go is deregistered at the
    controller at once (no new work), and its state stays reachable by `get` (the last
    RETIRED_KEPT of them) so that a request scheduled on it before, even one still in its
    prefill, still reaches it."""

    def __init__(
        self,
        config: RouterConfig,
        controller: ControllerClient,
        executor: Executor,
        metrics: RouterMetrics,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        self.config = config
        self.controller = controller
        self.executor = executor
        self.metrics = metrics
        self.identity = identity
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                config.engine_read_timeout_s, connect=config.engine_connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self.states: dict[str, EngineState] = {}
        # Let go, still reachable for requests scheduled on them before (oldest first).
        self.retired: OrderedDict[str, EngineState] = OrderedDict()
        self.monitors: dict[str, EngineMonitor] = {}
        self._agents: dict[str, AgentClient] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        for spec in config.engines:
            self._add(spec)

    def _agent(self, endpoint: str) -> AgentClient:
        client = self._agents.get(endpoint)
        if client is None:
            client = AgentClient(endpoint, self.config.agent_timeout_s, identity=self.identity)
            self._agents[endpoint] = client
        return client

    def _add(self, spec: EngineSpec) -> None:
        state = EngineState(spec)
        monitor = EngineMonitor(
            state,
            httpx.AsyncClient(timeout=httpx.Timeout(self.config.poll_interval_s + 2.0)),
            self.controller,
            self._agent(spec.agent),
            self.executor,
            self.metrics,
            self.config.poll_interval_s,
        )
        self.states[spec.id] = state
        self.monitors[spec.id] = monitor
        self.retired.pop(spec.id, None)
        if self._started:
            self._start_monitor(spec.id)

    def _start_monitor(self, engine_id: str) -> None:
        monitor = self.monitors[engine_id]
        self._tasks[engine_id] = asyncio.create_task(monitor.run(), name=f"monitor-{engine_id}")

    async def _let_go(self, engine_id: str) -> None:
        task = self._tasks.pop(engine_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        monitor = self.monitors.pop(engine_id)
        await monitor.http.aclose()
        state = self.states.pop(engine_id)
        state.up, state.problem = False, "no longer in the engines file"
        with contextlib.suppress(KeyError):  # never polled: no series to remove
            self.metrics.engine_up.remove(engine_id, state.spec.role)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._deregister, engine_id)
        self.retired[engine_id] = state
        while len(self.retired) > RETIRED_KEPT:
            self.retired.popitem(last=False)
        in_use = {s.spec.agent for s in self.states.values()}
        for endpoint in [e for e in self._agents if e not in in_use]:
            self._agents.pop(endpoint).close()

    def _deregister(self, engine_id: str) -> None:
        """The controller stops choosing it now; if it cannot be told, the liveness timeout
        drains it (no more reports come)."""
        try:
            self.controller.deregister_engine(engine_id)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                self.metrics.controller_errors.labels("deregister", exc.code().name).inc()
                log.warning(
                    "engine not deregistered: the controller drains it after its liveness timeout",
                    extra={"engine": engine_id, "code": exc.code().name},
                )

    async def apply(self, specs: Sequence[EngineSpec]) -> tuple[list[str], list[str]]:
        """Front exactly `specs`; returns the engine ids added and let go (an engine whose
        spec changed is both: let go, then added as it is now)."""
        wanted = {spec.id: spec for spec in specs}
        gone = [i for i, state in self.states.items() if wanted.get(i) != state.spec]
        for engine_id in gone:
            await self._let_go(engine_id)
        added = [i for i in wanted if i not in self.states]
        for engine_id in added:
            self._add(wanted[engine_id])
        return added, gone

    def start(self) -> None:
        self._started = True
        for engine_id in self.monitors:
            self._start_monitor(engine_id)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for monitor in self.monitors.values():
            await monitor.http.aclose()
        await self.http.aclose()
        for agent in self._agents.values():
            agent.close()

    def get(self, engine_id: str) -> EngineState | None:
        return self.states.get(engine_id) or self.retired.get(engine_id)

    def up(self) -> Iterator[EngineState]:
        return (s for s in self.states.values() if s.up)

    def add_routed(self, engine_id: str, tokens: int, requests: int = 1) -> None:
        """Count (or, with negative numbers, uncount) a request the router sent to an
        engine and that has not finished there yet."""
        state = self.get(engine_id)
        if state is not None:
            state.routed_requests += requests
            state.routed_tokens += tokens
