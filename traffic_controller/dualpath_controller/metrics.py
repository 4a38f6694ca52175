"""Prometheus metrics of the traffic controller, in a registry of its own (so several
controllers can live in one test process). Per-engine and per-node gauges are read from the
state at scrape time instead of being updated on every decision."""

from __future__ import annotations

import bisect
import gc
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from dualpath_controller.policy import Assignment, Role

if TYPE_CHECKING:
    from dualpath_controller.state import ControllerState

LATENCY_BUCKETS = (
    5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1,
)  # fmt: skip
FRACTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
GC_PAUSE_BUCKETS = (1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


class ControllerMetrics:
    def __init__(self, policy: str, registry: CollectorRegistry | None = None) -> None:
        self.policy = policy
        self.registry = registry or CollectorRegistry()
        # Counted on every request: plain ints, exported at scrape time (Tallies), ~0.2 us
        # per update against ~1-3 us for prometheus_client's locked counters and histograms.
        self.tallies = Tallies(policy)
        self.registry.register(self.tallies)
        self.rpc_errors = Counter(
            "dualpath_controller_rpc_errors_total",
            "gRPC calls answered with an error status",
            ["method", "code"],
            registry=self.registry,
        )
        self.tls_reloads = Counter(
            "dualpath_controller_tls_certificate_reloads_total",
            "Changes of the TLS certificate files seen: reloaded, or rejected (kept the old)",
            ["outcome"],
            registry=self.registry,
        )
        self.sessions_open = Gauge(
            "dualpath_controller_sessions_open",
            "Session streams open right now",
            registry=self.registry,
        )
        self.gc_pauses: GcPauses | None = None

    def bind(self, state: ControllerState) -> None:
        self.registry.register(_StateCollector(state))

    def watch_gc(self) -> GcPauses:
        """Start timing GC pauses (the server does; a library user may not want the hook)."""
        if self.gc_pauses is None:
            self.gc_pauses = GcPauses().install()
            self.registry.register(self.gc_pauses)
        return self.gc_pauses

    def observe_decision(self, assignment: Assignment, latency_s: float) -> None:
        t = self.tallies
        t.decisions[assignment.read_path.value] += 1
        t.de_fraction.observe(assignment.de_read_fraction)
        t.latency.observe(latency_s)

    def observe_finish(self, outcome: str) -> None:
        finishes = self.tallies.finishes
        finishes[outcome] = finishes.get(outcome, 0) + 1

    def observe_progress(self, signal: str) -> None:
        self.tallies.progress[signal] += 1

    def observe_schedule_batch(self, requests: int) -> None:
        self.tallies.schedule_batch.observe(requests)

    def observe_session_batch(self, operations: int) -> None:
        self.tallies.session_batch.observe(operations)

    def observe_rpc_error(self, method: str, code: str) -> None:
        self.rpc_errors.labels(method, code).inc()


class LocalHistogram:
    """A histogram as plain numbers: observe() is a bisect and two additions, no lock (the
    controller observes on its event-loop thread only; a scrape reads a near-snapshot)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket (value <= bound), +Inf last
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), list(self.counts), strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(labels, buckets, self.sum)


class Tallies(Collector):
    """The per-request metrics (decisions by read path, decode-side fractions, decision
    latency, requests finished, progress signals, batch sizes), counted in plain ints."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.decisions = {path: 0 for path in ("pe_read", "de_read", "split")}
        self.finishes: dict[str, int] = {}
        self.progress = {signal: 0 for signal in ("read_done", "prefill_done")}
        self.de_fraction = LocalHistogram(FRACTION_BUCKETS)
        self.latency = LocalHistogram(LATENCY_BUCKETS)
        self.schedule_batch = LocalHistogram(BATCH_BUCKETS)
        self.session_batch = LocalHistogram(BATCH_BUCKETS)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        decisions = CounterMetricFamily(
            "dualpath_controller_decisions",
            "Schedule decisions by policy and read path",
            labels=["policy", "path"],
        )
        for path, value in list(self.decisions.items()):
            decisions.add_metric([self.policy, path], value)
        yield decisions
        finishes = CounterMetricFamily(
            "dualpath_controller_requests_finished",
            "Requests released, by how they ended (completed, cancelled, expired)",
            labels=["outcome"],
        )
        for outcome, value in sorted(self.finishes.items()):
            finishes.add_metric([outcome], value)
        yield finishes
        progress = CounterMetricFamily(
            "dualpath_controller_request_progress",
            "Progress signals applied to booked requests (read_done, prefill_done)",
            labels=["signal"],
        )
        for signal, value in list(self.progress.items()):
            progress.add_metric([signal], value)
        yield progress
        for name, help_text, histogram, labels in (
            (
                "dualpath_controller_de_read_fraction",
                "Share of a request's cached bytes read on the decode side (0 = PE_READ,"
                " 1 = DE_READ)",
                self.de_fraction,
                ["policy"],
            ),
            (
                "dualpath_controller_decision_latency_seconds",
                "Time to decide and book one request inside the controller (policy core;"
                " a batch's time shared out over its decisions)",
                self.latency,
                ["policy"],
            ),
            (
                "dualpath_controller_schedule_batch_requests",
                "New requests decided together in one batch (the policy's batch form)",
                self.schedule_batch,
                [],
            ),
            (
                "dualpath_controller_session_batch_operations",
                "Operations per Session message received (how much a busy client coalesces)",
                self.session_batch,
                [],
            ),
        ):
            family = HistogramMetricFamily(name, help_text, labels=labels)
            histogram.add_to(family, [self.policy] if labels else [])
            yield family


class _StateCollector(Collector):
    def __init__(self, state: ControllerState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Scrapes run on the HTTP thread while the event loop mutates the state; list()
        # snapshots a dict atomically under the GIL.
        view = self.state.view
        engines = list(view.engines.values())
        nodes = list(view.nodes.values())
        labels = ["engine", "role", "node"]
        tokens = GaugeMetricFamily(
            "dualpath_controller_engine_unfinished_tokens",
            "tok_e: unfinished tokens per engine (reported + booked)",
            labels=labels,
        )
        requests = GaugeMetricFamily(
            "dualpath_controller_engine_unfinished_requests",
            "seq_e: unfinished requests per engine (reported + booked)",
            labels=labels,
        )
        free_hbm = GaugeMetricFamily(
            "dualpath_controller_engine_free_hbm_tokens",
            "Free HBM per decode engine, in tokens",
            labels=labels,
        )
        drained_flag = GaugeMetricFamily(
            "dualpath_controller_engine_drained",
            "1 when the engine gets no new work",
            labels=labels,
        )
        for e in engines:
            values = [e.engine_id, e.role.value, e.node]
            tokens.add_metric(values, e.unfinished_tokens)
            requests.add_metric(values, e.unfinished_requests)
            drained_flag.add_metric(values, 1.0 if e.drained else 0.0)
            if e.role is Role.DECODE:
                free_hbm.add_metric(values, e.free_hbm_tokens)
        yield from (tokens, requests, free_hbm, drained_flag)
        queue_length = GaugeMetricFamily(
            "dualpath_controller_node_read_queue_length",
            "Reads queued on the node's storage NIC",
            labels=["node"],
        )
        queue_tokens = GaugeMetricFamily(
            "dualpath_controller_node_read_queue_tokens",
            "read_q: tokens queued on the node's storage NIC",
            labels=["node"],
        )
        queue_bytes = GaugeMetricFamily(
            "dualpath_controller_node_read_queue_bytes",
            "Bytes queued on the node's storage NIC",
            labels=["node"],
        )
        for n in nodes:
            queue_length.add_metric([n.node], n.read_queue_length)
            queue_tokens.add_metric([n.node], n.read_queue_tokens)
            queue_bytes.add_metric([n.node], n.read_queue_bytes)
        yield from (queue_length, queue_tokens, queue_bytes)
        registered = GaugeMetricFamily(
            "dualpath_controller_engines",
            "Registered engines by role and state",
            labels=["role", "state"],
        )
        for role in Role:
            total = sum(1 for e in engines if e.role is role)
            drained = sum(1 for e in engines if e.role is role and e.drained)
            registered.add_metric([role.value, "active"], total - drained)
            registered.add_metric([role.value, "drained"], drained)
        yield registered
        yield GaugeMetricFamily(
            "dualpath_controller_drained_engines",
            "Engines drained (missed reports or a failed agent) right now",
            value=sum(1 for e in engines if e.drained),
        )
        yield GaugeMetricFamily(
            "dualpath_controller_in_flight_requests",
            "Assignments not yet completed or cancelled",
            value=len(self.state.in_flight),
        )
        counters = self.state.counters
        for name, help_text, value in (
            (
                "dualpath_controller_drains",
                "Engines drained (missed reports or a reported agent failure)",
                counters.drains,
            ),
            (
                "dualpath_controller_agent_failures",
                "Agent failures reported by callers (ReportAgentFailure)",
                counters.agent_failures,
            ),
            (
                "dualpath_controller_rejected",
                "Schedule calls refused for lack of capacity",
                counters.rejected,
            ),
            (
                "dualpath_controller_replayed",
                "Schedule calls answered from the idempotency record",
                counters.replayed,
            ),
            (
                "dualpath_controller_stale_reports",
                "Load reports ignored as stale",
                counters.stale_reports,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


class GcPauses(Collector):
    """Time the interpreter spends in cyclic garbage collection, per generation: a pause
    stops every thread, so it lands directly on the tail latency of calls in flight.

    The gc callback only adds numbers to plain lists (no locks: a collection can start
    while any lock is held, and taking a non-reentrant one there would deadlock); scrapes
    turn them into a histogram."""

    def __init__(self) -> None:
        self._started = 0.0
        # Per generation: cumulative bucket counts (+Inf last), sum, and the largest pause.
        self._buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self._installed = False

    def install(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = min(2, int(info.get("generation", 2)))
        counts = self._buckets[generation]
        for i, bound in enumerate(GC_PAUSE_BUCKETS):
            if pause <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self._sums[generation] += pause
        self.max_s[generation] = max(self.max_s[generation], pause)

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        pauses = HistogramMetricFamily(
            "dualpath_controller_gc_pause_seconds",
            "Cyclic GC pauses of the controller process by generation (wall time)",
            labels=["generation"],
        )
        largest = GaugeMetricFamily(
            "dualpath_controller_gc_pause_max_seconds",
            "Longest GC pause since the controller started, by generation",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*GC_PAUSE_BUCKETS, float("inf")), self._buckets[generation], strict=True
            ):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            pauses.add_metric([str(generation)], buckets, self._sums[generation])
            largest.add_metric([str(generation)], self.max_s[generation])
        yield pauses
        yield largest
