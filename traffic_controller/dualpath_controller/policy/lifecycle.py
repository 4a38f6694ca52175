"""The booking lifecycle of a request, written once for the gRPC server and the simulator.

A request's booked load goes through the same steps in both:

1. `schedule(requests)`: a FIFO batch is decided with the policy's batch form
   (`Policy.schedule_batch`: for `paper`, the decode-group Z rule over the batch), each
   assignment booked into the view before the next one is decided;
2. `read_done`: its cached KV has been read, so its bytes leave both nodes' read queues;
3. `prefill_done`: the prefill engine no longer carries it (implies read done);
4. `release`: completed, cancelled or expired: whatever is still booked is given back.

Engines' load reports (`report`) overwrite the view's numbers between these steps (the
server applies them from ReportLoad; the simulator sends none: its bookings are exact).

Pure and clock-free: no I/O, no time, no randomness. Both callers feed it the same typed
events (`ScheduleBatch`, `LoadReport`, `ReadDone`, `PrefillDone`, `Release`) through
`handle`, or call the
methods directly; the same events in the same order give the same assignments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dualpath_controller.policy.base import BatchResult, Policy
from dualpath_controller.policy.types import Request
from dualpath_controller.policy.view import Booking, ClusterView


@dataclass(frozen=True, slots=True)
class ScheduleBatch:
    """Requests that arrived together (one Session message, one batching window, one
    simulator dispatch), in FIFO order."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """An engine's own numbers (and its node's read queue): they overwrite what the view
    booked (None = keep). `free_hbm_tokens` only for decode engines."""

    engine_id: str
    unfinished_requests: int
    unfinished_tokens: int
    free_hbm_tokens: int | None
    read_queue_length: int
    read_queue_tokens: int
    read_queue_bytes: int
    snic_inflight_bytes: int


@dataclass(frozen=True, slots=True)
class ReadDone:
    request_id: str


@dataclass(frozen=True, slots=True)
class PrefillDone:
    request_id: str


@dataclass(frozen=True, slots=True)
class Release:
    request_id: str


LifecycleEvent = ScheduleBatch | LoadReport | ReadDone | PrefillDone | Release


class Lifecycle:
    """Owns the policy and the view it books into. Progress calls for a request that is not
    booked (never scheduled, or already released) return False and change nothing: the
    callers decide whether that is an error (the server's NOT_FOUND) or not."""

    def __init__(self, policy: Policy, view: ClusterView | None = None) -> None:
        self.policy = policy
        self.view = ClusterView() if view is None else view

    def schedule(self, requests: Sequence[Request]) -> BatchResult:
        """Decide and book a FIFO batch (a batch of one equals schedule + apply). Stops at
        the first request that finds no capacity; it and those behind it come back in
        `unscheduled`, with `blocked_reason`."""
        if not requests:
            return BatchResult()
        return self.policy.schedule_batch(self.view, requests)

    def report(self, report: LoadReport) -> None:
        """Apply a load report (the caller checked the engine exists and the report is
        newer than the last one)."""
        view = self.view
        view.update_engine_load(
            report.engine_id,
            unfinished_requests=report.unfinished_requests,
            unfinished_tokens=report.unfinished_tokens,
            free_hbm_tokens=report.free_hbm_tokens,
        )
        view.update_node_load(
            view.engines[report.engine_id].node,
            read_queue_length=report.read_queue_length,
            read_queue_tokens=report.read_queue_tokens,
            read_queue_bytes=report.read_queue_bytes,
            snic_inflight_bytes=report.snic_inflight_bytes,
        )

    def read_done(self, request_id: str) -> bool:
        if request_id not in self.view.bookings:
            return False
        self.view.finish_read(request_id)
        return True

    def prefill_done(self, request_id: str) -> bool:
        if request_id not in self.view.bookings:
            return False
        self.view.finish_prefill(request_id)
        return True

    def release(self, request_id: str) -> Booking | None:
        if request_id not in self.view.bookings:
            return None
        return self.view.release(request_id)

    def booking(self, request_id: str) -> Booking | None:
        return self.view.bookings.get(request_id)

    def handle(self, event: LifecycleEvent) -> BatchResult | bool | Booking | None:
        """Apply one event: what the matching method returns."""
        if isinstance(event, ScheduleBatch):
            return self.schedule(event.requests)
        if isinstance(event, LoadReport):
            self.report(event)
            return None
        if isinstance(event, ReadDone):
            return self.read_done(event.request_id)
        if isinstance(event, PrefillDone):
            return self.prefill_done(event.request_id)
        return self.release(event.request_id)


__all__ = [
    "Lifecycle",
    "LifecycleEvent",
    "LoadReport",
    "PrefillDone",
    "ReadDone",
    "Release",
    "ScheduleBatch",
]
