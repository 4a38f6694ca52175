"""The controller's state machine: registrations, reports, liveness and decisions.

Synchronous and clock-free: every call that needs the time takes `now` (monotonic seconds)
from the caller, so the gRPC layer owns the clock and tests can drive time by hand. Errors
are `ControllerError(grpc status code, message)`; the gRPC layer turns them into statuses.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.convert import (
    assignment_to_proto,
    load_report_from_proto,
    request_from_proto,
    role_from_proto,
)
from dualpath_controller.metrics import ControllerMetrics
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    Lifecycle,
    Policy,
    Request,
    Role,
)

log = logging.getLogger("dualpath.controller")

# Limits beyond which a number in a registration or report is absurd, not just large.
MAX_TOKENS = 1 << 40
MAX_ID_LENGTH = 256
UINT32_MAX = 2**32 - 1
DRAIN_MISSED_REPORTS = "missed-reports"
DRAIN_AGENT_FAILED = "agent-failed"
MAX_REASON_LENGTH = 256


class ControllerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ControllerError:
    return ControllerError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class EngineRecord:
    engine: pb.Engine
    last_seen: float
    last_seq: int = 0
    last_report: pb.LoadReport | None = None
    drain_reason: str = ""
    # When a caller last reported this engine's agent failed (drain_reason agent-failed).
    agent_failed_at: float = 0.0
    assigned_requests: int = 0
    assigned_tokens: int = 0


# (request_id, total, cached, append, expected_output, kv_bytes_per_token): what makes two
# Schedule calls "the same request" for idempotency.
RequestKey = tuple[str, int, int, int, int, int]


class Decision(NamedTuple):
    """What the controller remembers of one decision, as plain values only. Stored as a
    plain tuple (`tuple(decision)`, read back with `Decision._make`): exact tuples of str,
    int, float and bytes are untracked by Python's cyclic GC (subclasses such as this one
    never are), so the 100,000 remembered decisions add nothing to GC pauses. As objects
    they made full collections of ~200-400 ms on a loaded 2-core VM, each a latency spike
    for every call waiting on the server."""

    key: RequestKey
    # The serialized pb.Assignment (a replay parses it back: ~0.5 us).
    assignment: bytes
    prefill_engine_id: str
    decode_engine_id: str
    total_tokens: int
    scheduled_at: float


# A Decision as a plain tuple (see Decision).
StoredDecision = tuple[RequestKey, bytes, str, str, int, float]


def request_key(request: Request) -> RequestKey:
    return (
        request.request_id,
        request.total_tokens,
        request.cached_tokens,
        request.append_tokens,
        request.expected_output_tokens,
        request.kv_bytes_per_token,
    )


@dataclass
class Counters:
    decisions: int = 0
    rejected: int = 0
    replayed: int = 0
    completed: int = 0
    cancelled: int = 0
    drains: int = 0
    agent_failures: int = 0
    stale_reports: int = 0
    expired: int = 0


def _check_id(name: str, value: str) -> None:
    if not value:
        raise invalid(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise invalid(f"{name} is {len(value)} characters long (limit {MAX_ID_LENGTH})")


def _check_tokens(name: str, value: int) -> None:
    if value > MAX_TOKENS:
        raise invalid(f"{name}={value} is absurd (limit {MAX_TOKENS}; negative numbers wrap)")


class ControllerState:
    def __init__(
        self,
        policy: Policy,
        *,
        liveness_timeout_s: float = 5.0,
        report_interval_s: float = 0.5,
        remember_finished: int = 100_000,
        request_ttl_s: float = 3_600.0,
        agent_failure_holdoff_s: float | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        if liveness_timeout_s <= 0 or report_interval_s <= 0 or request_ttl_s <= 0:
            raise ValueError("liveness_timeout_s, report_interval_s and request_ttl_s must be > 0")
        self.policy = policy
        # The booking lifecycle the simulator runs too (policy/lifecycle.py).
        self.lifecycle = Lifecycle(policy)
        self.view: ClusterView = self.lifecycle.view
        self.liveness_timeout_s = liveness_timeout_s
        self.report_interval_s = report_interval_s
        # A report sent this long after an agent failure report proves the agent is back
        # (two report intervals: a report already in flight when it failed does not).
        self.agent_failure_holdoff_s = (
            max(0.5, 2 * report_interval_s)
            if agent_failure_holdoff_s is None
            else agent_failure_holdoff_s
        )
        self.records: dict[str, EngineRecord] = {}
        # In-flight decisions, then (bounded) finished ones so retries stay idempotent.
        self.in_flight: dict[str, StoredDecision] = {}
        self.finished: OrderedDict[str, StoredDecision] = OrderedDict()
        self.remember_finished = remember_finished
        # A request never completed nor cancelled (its client died) is released after this
        # long, so forgotten requests cannot hold engine load forever.
        self.request_ttl_s = request_ttl_s
        self.counters = Counters()
        self.metrics = metrics or ControllerMetrics(policy.name)
        self.metrics.bind(self)

    # ----- engines -----

    def register(self, engine: pb.Engine, now: float) -> pb.RegisterEngineResponse:
        _check_id("engine.engine_id", engine.engine_id)
        _check_id("engine.node", engine.node)
        try:
            role = role_from_proto(engine.role)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        _check_tokens("engine.hbm_capacity_tokens", engine.hbm_capacity_tokens)
        if role is Role.DECODE and engine.hbm_capacity_tokens == 0:
            raise invalid("engine.hbm_capacity_tokens must be > 0 for a decode engine")
        bw = engine.snic_read_bytes_per_s
        if not math.isfinite(bw) or bw < 0:
            raise invalid(f"engine.snic_read_bytes_per_s must be finite and >= 0, got {bw}")
        if len(engine.group) > MAX_ID_LENGTH:
            raise invalid(f"engine.group is too long (limit {MAX_ID_LENGTH})")
        replaced = engine.engine_id in self.records
        self.view.add_engine(
            EngineState(
                engine.engine_id,
                role,
                engine.node,
                group=engine.group,
                hbm_capacity_tokens=engine.hbm_capacity_tokens,
                free_hbm_tokens=engine.hbm_capacity_tokens,
            )
        )
        if bw > 0:
            self.view.update_node_load(engine.node, snic_read_bytes_per_s=bw)
        stored = pb.Engine()
        stored.CopyFrom(engine)
        self.records[engine.engine_id] = EngineRecord(stored, last_seen=now)
        log.info(
            "engine registered",
            extra={
                "engine_id": engine.engine_id,
                "role": role.value,
                "node": engine.node,
                "replaced": replaced,
            },
        )
        return pb.RegisterEngineResponse(
            report_interval_ms=min(UINT32_MAX, round(self.report_interval_s * 1000)),
            liveness_timeout_ms=min(UINT32_MAX, round(self.liveness_timeout_s * 1000)),
        )

    def deregister(self, engine_id: str) -> None:
        _check_id("engine_id", engine_id)
        if engine_id not in self.records:
            raise ControllerError(
                grpc.StatusCode.NOT_FOUND, f"engine {engine_id!r} is not registered"
            )
        del self.records[engine_id]
        self.view.remove_engine(engine_id)
        log.info("engine deregistered", extra={"engine_id": engine_id})

    def report(self, report: pb.LoadReport, now: float) -> bool:
        """Apply a load report; False when it is stale (report_seq not newer)."""
        _check_id("engine_id", report.engine_id)
        record = self.records.get(report.engine_id)
        if record is None:
            raise ControllerError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"engine {report.engine_id!r} is not registered: call RegisterEngine first",
            )
        if report.report_seq == 0:
            raise invalid("report_seq must be >= 1")
        for name in ("unfinished_tokens", "read_queue_bytes", "free_hbm_tokens"):
            _check_tokens(name, getattr(report, name))
        _check_tokens("read_queue_tokens", report.read_queue_tokens)
        _check_tokens("snic_inflight_bytes", report.snic_inflight_bytes)
        capacity = record.engine.hbm_capacity_tokens
        if record.engine.role == pb.ENGINE_ROLE_DECODE and report.free_hbm_tokens > capacity:
            raise invalid(
                f"free_hbm_tokens ({report.free_hbm_tokens}) > hbm_capacity_tokens ({capacity})"
            )
        if report.report_seq <= record.last_seq:
            self.counters.stale_reports += 1
            return False
        record.last_seq = report.report_seq
        record.last_seen = now
        stored = pb.LoadReport()
        stored.CopyFrom(report)
        record.last_report = stored
        view = self.view
        self.lifecycle.report(load_report_from_proto(report, record.engine.role))
        if record.drain_reason == DRAIN_MISSED_REPORTS or (
            record.drain_reason == DRAIN_AGENT_FAILED
            and now - record.agent_failed_at >= self.agent_failure_holdoff_s
        ):
            log.info(
                "engine back in service",
                extra={"engine_id": report.engine_id, "was": record.drain_reason},
            )
            record.drain_reason = ""
            view.set_drained(report.engine_id, False)
        return True

    def agent_failed(self, failure: pb.AgentFailureReport, now: float) -> list[str]:
        """A caller saw an agent fail: drain the engines it serves now, not after the
        liveness timeout. Returns the engines newly drained. An agent no engine names is
        not an error (it may have been replaced already)."""
        _check_id("agent_endpoint", failure.agent_endpoint)
        reason = failure.reason[:MAX_REASON_LENGTH]
        self.counters.agent_failures += 1
        drained = []
        for engine_id, record in self.records.items():
            if record.engine.agent_endpoint != failure.agent_endpoint:
                continue
            record.agent_failed_at = now
            if record.drain_reason:
                if record.drain_reason == DRAIN_MISSED_REPORTS:
                    record.drain_reason = DRAIN_AGENT_FAILED
                continue
            self._drain(engine_id, record, DRAIN_AGENT_FAILED)
            drained.append(engine_id)
        log.warning(
            "agent reported failed: its engines are drained until they report again",
            extra={
                "agent_endpoint": failure.agent_endpoint,
                "reason": reason,
                "drained": drained,
                "holdoff_s": self.agent_failure_holdoff_s,
            },
        )
        return drained

    def _drain(self, engine_id: str, record: EngineRecord, reason: str) -> None:
        record.drain_reason = reason
        self.view.set_drained(engine_id, True)
        self.counters.drains += 1

    def sweep(self, now: float) -> list[str]:
        """Drain engines whose last report (or registration) is older than the timeout, and
        release requests older than the request TTL. Returns the newly drained engines."""
        self._expire(now)
        drained = []
        for engine_id, record in self.records.items():
            if record.drain_reason or now - record.last_seen <= self.liveness_timeout_s:
                continue
            self._drain(engine_id, record, DRAIN_MISSED_REPORTS)
            drained.append(engine_id)
            log.warning(
                "engine drained: no report within the liveness timeout",
                extra={
                    "engine_id": engine_id,
                    "silent_s": round(now - record.last_seen, 3),
                    "timeout_s": self.liveness_timeout_s,
                },
            )
        return drained

    def _expire(self, now: float) -> None:
        expired = []
        for request_id, stored in self.in_flight.items():  # oldest first
            if now - Decision._make(stored).scheduled_at <= self.request_ttl_s:
                break
            expired.append(request_id)
        for request_id in expired:
            self.finish(request_id, cancelled=True, reason="expired", expired=True)

    # ----- requests -----

    def schedule(
        self,
        message: pb.ScheduleRequest,
        now: float = 0.0,
        out: pb.ScheduleResponse | None = None,
    ) -> pb.ScheduleResponse:
        """Decide (or replay) one request: a batch of one. The answer is written into `out`
        when given (the Session stream passes its answer's field: no copy), else into a new
        message. Raises ControllerError."""
        (result,) = self.schedule_batch((message,), now, (out,))
        if isinstance(result, ControllerError):
            raise result
        return result

    def schedule_batch(
        self,
        messages: Sequence[pb.ScheduleRequest],
        now: float = 0.0,
        outs: Sequence[pb.ScheduleResponse | None] | None = None,
    ) -> list[pb.ScheduleResponse | ControllerError]:
        """Decide a batch of requests that arrived together, in order, with the policy's
        batch form (`Lifecycle.schedule`, as the simulator does). Per request: its answer
        (written into outs[i] when given) or its error. Replays and invalid requests are
        answered on their own; the new ones are decided together. A request that finds no
        capacity, and every new one behind it (FIFO, head of line, like the paper's queue),
        gets RESOURCE_EXHAUSTED. A request id repeated inside the batch is answered after
        the batch's decisions (a replay of the first)."""
        outs = outs if outs is not None else (None,) * len(messages)
        results: list[pb.ScheduleResponse | ControllerError | None] = [None] * len(messages)
        fresh: list[Request] = []
        fresh_at: list[int] = []
        seen: set[str] = set()
        repeated: list[int] = []
        for i, message in enumerate(messages):
            try:
                request = request_from_proto(message)
            except ValueError as exc:
                results[i] = invalid(str(exc))
                continue
            if request.request_id in seen:
                repeated.append(i)
                continue
            try:
                replay = self._replay(request, outs[i])
            except ControllerError as exc:
                results[i] = exc
                continue
            if replay is not None:
                results[i] = replay
                continue
            seen.add(request.request_id)
            fresh.append(request)
            fresh_at.append(i)
        if fresh:
            self._decide(fresh, fresh_at, now, outs, results)
        for i in repeated:
            (results[i],) = self.schedule_batch((messages[i],), now, (outs[i],))
        return [r for r in results if r is not None]

    def _replay(
        self, request: Request, out: pb.ScheduleResponse | None
    ) -> pb.ScheduleResponse | None:
        stored = self.in_flight.get(request.request_id) or self.finished.get(request.request_id)
        if stored is None:
            return None
        known = Decision._make(stored)
        if known.key != request_key(request):
            raise invalid(
                f"request_id {request.request_id!r} was already scheduled with different"
                " parameters (request ids must be unique)"
            )
        self.counters.replayed += 1
        out = pb.ScheduleResponse() if out is None else out
        out.assignment.MergeFromString(known.assignment)
        out.replayed = True
        return out

    def _decide(
        self,
        requests: list[Request],
        positions: list[int],
        now: float,
        outs: Sequence[pb.ScheduleResponse | None],
        results: list[pb.ScheduleResponse | ControllerError | None],
    ) -> None:
        for role in (Role.PREFILL, Role.DECODE):
            if self.view.count(role) == 0:
                error = ControllerError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"no {role.value} engines registered"
                )
                for i in positions:
                    results[i] = error
                return
        started = time.perf_counter()
        batch = self.lifecycle.schedule(requests)
        self.metrics.observe_schedule_batch(len(requests))
        # Per decision: the batch's cost shared out (a batch of one: that decision's).
        latency = (time.perf_counter() - started) / max(1, len(batch.assignments))
        bookings = self.view.bookings
        records = self.records
        for request, assignment, i in zip(requests, batch.assignments, positions, strict=False):
            booking = bookings[request.request_id]
            out = outs[i]
            out = pb.ScheduleResponse() if out is None else out
            response = out.assignment
            assignment_to_proto(assignment, into=response)
            pe_record = records[booking.prefill_engine_id]
            de_record = records[booking.decode_engine_id]
            response.prefill_node = booking.pe_node
            response.decode_node = booking.de_node
            response.prefill_agent_endpoint = pe_record.engine.agent_endpoint
            response.decode_agent_endpoint = de_record.engine.agent_endpoint
            response.pe_read_bytes = booking.pe_read_bytes
            response.de_read_bytes = booking.de_read_bytes
            pe_record.assigned_requests += 1
            pe_record.assigned_tokens += request.total_tokens
            de_record.assigned_requests += 1
            de_record.assigned_tokens += request.total_tokens
            self.in_flight[request.request_id] = (
                request_key(request),
                response.SerializeToString(),
                booking.prefill_engine_id,
                booking.decode_engine_id,
                request.total_tokens,
                now,
            )
            self.counters.decisions += 1
            self.metrics.observe_decision(assignment, latency)
            results[i] = out
        if batch.unscheduled:
            head = batch.unscheduled[0].request_id
            for k in range(len(batch.unscheduled)):
                self.counters.rejected += 1
                behind = "" if k == 0 else f" (queued behind {head!r})"
                results[positions[len(batch.assignments) + k]] = ControllerError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"no capacity: {batch.blocked_reason}{behind}; retry later",
                )
        if log.isEnabledFor(logging.DEBUG):
            for assignment in batch.assignments:
                log.debug(
                    "scheduled",
                    extra={"request_id": assignment.request_id, "reason": assignment.reason},
                )

    def progress(self, request_id: str, *, prefill_done: bool) -> None:
        """ReadDone (prefill_done False) or PrefillDone: give the booked read (and, after
        prefill, the prefill engine's load) back early. Idempotent; a finished request is a
        no-op; one never scheduled here is NOT_FOUND."""
        _check_id("request_id", request_id)
        if request_id not in self.in_flight:
            if request_id in self.finished:
                return
            raise ControllerError(
                grpc.StatusCode.NOT_FOUND,
                f"request {request_id!r} is not in flight (never scheduled here, or the"
                " controller restarted since)",
            )
        if prefill_done:
            self.lifecycle.prefill_done(request_id)
        else:
            self.lifecycle.read_done(request_id)
        self.metrics.observe_progress("prefill_done" if prefill_done else "read_done")

    def finish(
        self, request_id: str, *, cancelled: bool = False, reason: str = "", expired: bool = False
    ) -> None:
        """Complete or Cancel: release the booked load. Repeats are no-ops."""
        _check_id("request_id", request_id)
        stored = self.in_flight.pop(request_id, None)
        if stored is None:
            if request_id in self.finished:
                return
            raise ControllerError(
                grpc.StatusCode.NOT_FOUND,
                f"request {request_id!r} is not in flight (never scheduled here, or the"
                " controller restarted since)",
            )
        self.lifecycle.release(request_id)
        decision = Decision._make(stored)
        for engine_id in (decision.prefill_engine_id, decision.decode_engine_id):
            record = self.records.get(engine_id)
            if record is not None:
                record.assigned_requests = max(0, record.assigned_requests - 1)
                record.assigned_tokens = max(0, record.assigned_tokens - decision.total_tokens)
        self.finished[request_id] = stored
        while len(self.finished) > self.remember_finished:
            self.finished.popitem(last=False)
        if expired:
            self.counters.expired += 1
            outcome = "expired"
            log.warning(
                "request expired: never completed nor cancelled",
                extra={"request_id": request_id, "ttl_s": self.request_ttl_s},
            )
        elif cancelled:
            self.counters.cancelled += 1
            outcome = "cancelled"
            log.info("request cancelled", extra={"request_id": request_id, "reason": reason})
        else:
            self.counters.completed += 1
            outcome = "completed"
        self.metrics.observe_finish(outcome)

    # ----- status -----

    def status(self, now: float) -> pb.ClusterStatus:
        out = pb.ClusterStatus(
            policy=self.policy.name,
            decisions_total=self.counters.decisions,
            in_flight_requests=len(self.in_flight),
            rejected_total=self.counters.rejected,
        )
        out.policy_params.update(self.policy.params)
        for engine_id in sorted(self.records):
            record = self.records[engine_id]
            state = self.view.engines[engine_id]
            entry = out.engines.add(
                engine=record.engine,
                drained=state.drained,
                report_age_s=now - record.last_seen,
                assigned_requests=record.assigned_requests,
                assigned_tokens=record.assigned_tokens,
                unfinished_requests=state.unfinished_requests,
                unfinished_tokens=state.unfinished_tokens,
                free_hbm_tokens=state.free_hbm_tokens,
                drain_reason=record.drain_reason,
            )
            if record.last_report is not None:
                entry.last_report.CopyFrom(record.last_report)
        for name in sorted(self.view.nodes):
            node = self.view.nodes[name]
            out.nodes.add(
                node=name,
                read_queue_length=node.read_queue_length,
                read_queue_tokens=node.read_queue_tokens,
                read_queue_bytes=node.read_queue_bytes,
                snic_inflight_bytes=node.snic_inflight_bytes,
                snic_read_bytes_per_s=node.snic_read_bytes_per_s,
            )
        return out

    def readiness(self) -> tuple[bool, str]:
        """Ready once serving (engines register through us, so we cannot wait for them)."""
        active = {r: self.view.count(r, active_only=True) for r in Role}
        total = {r: self.view.count(r) for r in Role}
        return True, (
            f"serving; policy {self.policy.name}; prefill {active[Role.PREFILL]}/"
            f"{total[Role.PREFILL]} active, decode {active[Role.DECODE]}/{total[Role.DECODE]} active"
        )


__all__ = ["ControllerError", "ControllerState"]
