"""Engine stand-ins' shared state: their load, their GPUs, and what the nodes report.

- `NodeMonitor` polls every agent's Stat (read queue, SNIC bytes, checksum failures) and
  keeps a time series of bytes read from storage per node (progress display and chart).
- `EngineBook` is the engines' own view of their load: unfinished requests and tokens
  (seq_e, tok_e) and free HBM, updated by the turns as they go.
- `Gpu` models one engine's GPU: a lock held for each layer's modelled compute time.
- `EngineReporters` registers one engine per node with the controller and reports
  engine load + the node's read queue (as the agent measures it) every report interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from dualpath.v1 import agent_pb2
from dualpath.v1 import traffic_controller_pb2 as tc
from dualpath_agent.client import AgentClient
from dualpath_common import tls
from dualpath_controller.client import ControllerClient, EngineDown, EngineLoad, EngineReporter

from dualpath_local.stack import NodeSpec

log = logging.getLogger("dualpath.local")

# A Stat poll of a live agent on loopback answers in milliseconds; a hung one must not
# stall the monitor.
STAT_TIMEOUT_S = 1.0
# An engine whose node's agent has not answered for this long is not reported (the
# controller drains it after its liveness timeout, sooner when a turn reports the agent).
AGENT_SILENT_S = 1.0


@dataclass(frozen=True)
class NodeCounters:
    """What an agent's Stat counts (cumulative since it started)."""

    storage_bytes_read: int
    storage_reads: int
    checksum_failures: int


@dataclass
class Sample:
    t: float
    bytes_read: dict[str, int]


class NodeMonitor:
    """Latest Stat of every agent, refreshed every `interval_s` by one thread."""

    def __init__(self, clients: dict[str, AgentClient], interval_s: float = 0.1) -> None:
        self.clients = clients
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: dict[str, agent_pb2.StatResponse] = {}
        self._answered: dict[str, float] = {}
        # Counters of agents' earlier lives (before a restart reset them), per node.
        self._carried: dict[str, NodeCounters] = {}
        self.samples: list[Sample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="node-monitor")

    def start(self) -> NodeMonitor:
        self.poll_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll_once(self) -> dict[str, agent_pb2.StatResponse]:
        fresh: dict[str, agent_pb2.StatResponse] = {}
        for node, client in self.clients.items():
            try:
                fresh[node] = client.stub.Stat(agent_pb2.StatRequest(), timeout=STAT_TIMEOUT_S)
            except grpc.RpcError:
                self.errors += 1
        now = time.monotonic()
        with self._lock:
            for node, stat in fresh.items():
                previous = self._latest.get(node)
                if previous is not None and stat.storage_bytes_read < previous.storage_bytes_read:
                    # The agent restarted and its counters start over: carry what the last
                    # life counted, so totals keep rising.
                    carried = self._carried.get(node, NodeCounters(0, 0, 0))
                    self._carried[node] = NodeCounters(
                        carried.storage_bytes_read + previous.storage_bytes_read,
                        carried.storage_reads + previous.storage_reads_completed,
                        carried.checksum_failures + previous.checksum_failures,
                    )
                self._answered[node] = now
            self._latest.update(fresh)
            self.samples.append(
                Sample(now, {n: self._counters(n).storage_bytes_read for n in self._latest})
            )
        return fresh

    def _counters(self, node: str) -> NodeCounters:
        stat = self._latest[node]
        carried = self._carried.get(node, NodeCounters(0, 0, 0))
        return NodeCounters(
            carried.storage_bytes_read + stat.storage_bytes_read,
            carried.storage_reads + stat.storage_reads_completed,
            carried.checksum_failures + stat.checksum_failures,
        )

    def counters(self) -> dict[str, NodeCounters]:
        """Every node's cumulative counters across agent restarts, polled now (a node whose
        agent does not answer keeps its last values)."""
        self.poll_once()
        with self._lock:
            return {node: self._counters(node) for node in self._latest}

    def latest(self, node: str) -> agent_pb2.StatResponse | None:
        with self._lock:
            return self._latest.get(node)

    def answering(self, node: str, within_s: float) -> bool:
        """Whether the node's agent answered a Stat in the last `within_s` seconds."""
        with self._lock:
            answered = self._answered.get(node)
        return answered is not None and time.monotonic() - answered <= within_s

    def rate(self, node: str, window_s: float = 1.0) -> float:
        """Bytes/s read from storage by `node` over the last `window_s` seconds."""
        with self._lock:
            if len(self.samples) < 2:
                return 0.0
            last = self.samples[-1]
            first = next((s for s in self.samples if s.t >= last.t - window_s), self.samples[0])
        dt = last.t - first.t
        if dt <= 0:
            return 0.0
        return (last.bytes_read.get(node, 0) - first.bytes_read.get(node, 0)) / dt

    def samples_between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.t <= end]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()


@dataclass
class EngineLoadState:
    hbm_capacity_tokens: int
    requests: int = 0
    tokens: int = 0
    hbm_used_tokens: int = 0


class EngineBook:
    """Each engine's unfinished requests and tokens, and HBM used by requests it holds."""

    def __init__(self, capacities: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self._engines = {e: EngineLoadState(c) for e, c in capacities.items()}

    def add(self, engine: str, tokens: int, hbm_tokens: int = 0) -> None:
        with self._lock:
            s = self._engines[engine]
            s.requests += 1
            s.tokens += tokens
            s.hbm_used_tokens += hbm_tokens

    def remove(self, engine: str, tokens: int, hbm_tokens: int = 0) -> None:
        with self._lock:
            s = self._engines[engine]
            s.requests -= 1
            s.tokens -= tokens
            s.hbm_used_tokens -= hbm_tokens

    def load(self, engine: str) -> tuple[int, int, int]:
        with self._lock:
            s = self._engines[engine]
            free = max(0, s.hbm_capacity_tokens - s.hbm_used_tokens)
            return s.requests, s.tokens, free


class Gpu:
    """One engine's GPU: modelled compute holds it, so an engine computes one thing at a
    time (a real engine batches; the modelled time is then the batch's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy_s = 0.0

    def compute(self, seconds: float, stop: threading.Event | None = None) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if stop is not None:
                stop.wait(seconds)
            else:
                time.sleep(seconds)
            self.busy_s += seconds


@dataclass
class EngineReporters:
    """One EngineReporter per node's engine, against one controller."""

    target: str
    nodes: list[NodeSpec]
    monitor: NodeMonitor
    book: EngineBook
    hbm_tokens: dict[str, int]
    endpoints: dict[str, str]
    tokens_per_queued_byte: float
    reporters: list[EngineReporter] = field(default_factory=list)
    client: ControllerClient | None = None
    identity: tls.IdentityDir | None = None  # mutual TLS to the controller

    def start(self) -> None:
        self.client = ControllerClient(self.target, identity=self.identity)
        self.client.wait_ready(30)
        for spec in self.nodes:
            role = (
                tc.EngineRole.ENGINE_ROLE_PREFILL
                if spec.role == "prefill"
                else tc.EngineRole.ENGINE_ROLE_DECODE
            )
            engine = tc.Engine(
                engine_id=spec.engine_id,
                role=role,
                node=spec.name,
                hbm_capacity_tokens=self.hbm_tokens[spec.engine_id],
                agent_endpoint=self.endpoints[spec.name],
                snic_read_bytes_per_s=spec.snic_read_bytes_per_s,
            )
            reporter = EngineReporter(self.client, engine, self._load_fn(spec))
            reporter.report_once()  # registered and reported before the first Schedule
            self.reporters.append(reporter.start())

    def _load_fn(self, spec: NodeSpec) -> Callable[[], EngineLoad]:
        def load() -> EngineLoad:
            if not self.monitor.answering(spec.name, AGENT_SILENT_S):
                raise EngineDown(f"agent {spec.name} does not answer")
            requests, tokens, free_hbm = self.book.load(spec.engine_id)
            stat = self.monitor.latest(spec.name)
            queue_bytes = stat.read_queue_bytes if stat is not None else 0
            return EngineLoad(
                unfinished_requests=requests,
                unfinished_tokens=tokens,
                free_hbm_tokens=free_hbm,
                read_queue_length=stat.read_queue_length if stat is not None else 0,
                read_queue_bytes=queue_bytes,
                read_queue_tokens=int(queue_bytes * self.tokens_per_queued_byte),
                snic_inflight_bytes=stat.snic_inflight_bytes if stat is not None else 0,
            )

        return load

    def stop(self) -> None:
        for r in self.reporters:
            r.stop(deregister=False)
        self.reporters.clear()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
