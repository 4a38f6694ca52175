"""The Session operations in-process: `TrafficControllerService.answer_batch` runs the unary
calls' code on each operation of a batch; what the controller remembers stays out of the
cyclic GC's way; GC pause metrics; the session client's error mapping."""

from __future__ import annotations

import gc
import threading

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.client import ControllerSession, SessionOperationError
from dualpath_controller.metrics import GcPauses
from dualpath_controller.policy import Request
from dualpath_controller.policy.types import Assignment
from dualpath_controller.server import TrafficControllerService
from dualpath_controller.state import ControllerState
from prometheus_client import generate_latest

from tests.unit.test_controller_state import new_state, sched

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


def service(state: ControllerState) -> TrafficControllerService:
    return TrafficControllerService(state, max_long_lived_calls=2, clock=lambda: 0.0)


def op(correlation_id: int, **operation: object) -> pb.SessionRequest:
    return pb.SessionRequest(correlation_id=correlation_id, **operation)


def test_a_batch_is_answered_in_order_and_errors_stay_per_operation():
    state = new_state()
    batch = pb.SessionRequestBatch(
        requests=[
            op(11, schedule=sched("r1")),
            op(12, schedule=sched("r2", total=100, cached=200)),  # cached > total
            op(13),  # no operation set
            op(14, complete=pb.CompleteRequest(request_id="ghost")),
            op(15, schedule=sched("r1")),  # replay
            op(16, complete=pb.CompleteRequest(request_id="r1")),
            op(17, cancel=pb.CancelRequest(request_id="r1", reason="again")),  # repeat: no-op
        ]
    )
    answers = service(state).answer_batch(batch).responses
    assert [a.correlation_id for a in answers] == [11, 12, 13, 14, 15, 16, 17]
    kinds = [a.WhichOneof("result") for a in answers]
    assert kinds == ["schedule", "error", "error", "error", "schedule", "complete", "cancel"]
    assert answers[1].error.code == INVALID and "cached_tokens" in answers[1].error.message
    assert answers[2].error.code == INVALID and "operation must be set" in answers[2].error.message
    assert answers[3].error.code == NOT_FOUND and "ghost" in answers[3].error.message
    assert not answers[0].schedule.replayed and answers[4].schedule.replayed
    assert answers[4].schedule.assignment == answers[0].schedule.assignment
    assert state.counters.decisions == 1 and state.counters.completed == 1
    assert not state.in_flight and state.view.engines["d0"].unfinished_tokens == 0
    text = generate_latest(state.metrics.registry).decode()
    assert 'rpc_errors_total{code="INVALID_ARGUMENT",method="Session.Schedule"} 1.0' in text
    assert 'rpc_errors_total{code="NOT_FOUND",method="Session.Complete"} 1.0' in text
    assert 'rpc_errors_total{code="INVALID_ARGUMENT",method="Session"} 1.0' in text


def test_session_and_unary_paths_decide_alike():
    # Two controllers with the same history: one driven through Session batches, one
    # through the state calls the unary handlers make. Same decisions, field for field.
    streamed, direct = new_state(), new_state()
    svc = service(streamed)
    for i in range(12):
        message = sched(f"r{i}", total=300 + 37 * i, cached=200)
        (answer,) = svc.answer_batch(
            pb.SessionRequestBatch(requests=[op(i, schedule=message)])
        ).responses
        assert answer.schedule == direct.schedule(message)
        if i % 3 == 2:  # release some, the same way on both sides
            rid = pb.CompleteRequest(request_id=f"r{i - 1}")
            svc.answer_batch(pb.SessionRequestBatch(requests=[op(100 + i, complete=rid)]))
            direct.finish(rid.request_id)
    assert streamed.status(0.0) == direct.status(0.0)


def test_schedule_writes_into_the_message_it_is_given():
    state = new_state()
    out = pb.ScheduleResponse()
    assert state.schedule(sched("r1"), 0.0, out) is out
    assert out.assignment.request_id == "r1" and not out.replayed
    again = pb.ScheduleResponse()
    state.schedule(sched("r1"), 0.0, again)
    assert again.replayed and again.assignment == out.assignment


def test_remembered_decisions_are_invisible_to_the_cyclic_gc():
    state = new_state()
    for i in range(3):
        state.schedule(sched(f"r{i}"))
    state.finish("r0")
    gc.collect()
    gc.collect()  # a tuple is untracked once its members are, at the latest one pass later
    # Plain tuples of str/int/bytes: no GC pass walks them again.
    assert not gc.is_tracked(state.finished["r0"])
    assert not gc.is_tracked(state.in_flight["r1"])
    booking = state.view.bookings["r1"]
    assert not any(isinstance(x, Request | Assignment) for x in gc.get_referents(booking))


def test_gc_pauses_are_measured_per_generation():
    pauses = GcPauses().install()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.uninstall()
    gc.collect()  # not counted any more
    families = {f.name: f for f in pauses.collect()}
    counts = {
        s.labels["generation"]: s.value
        for s in families["dualpath_controller_gc_pause_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert pauses.max_s[2] > 0.0


def test_operation_errors_map_status_numbers():
    err = SessionOperationError.from_proto(pb.OperationError(code=8, message="busy"))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and err.details() == "busy"
    assert isinstance(err, grpc.RpcError)
    unknown = SessionOperationError.from_proto(pb.OperationError(code=99, message="?"))
    assert unknown.code() is grpc.StatusCode.UNKNOWN


class _EndedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_stream_that_broke_under_a_write_is_retryable_not_internal():
    # grpc.aio reports a write that raced the stream's end as INTERNAL (grpc/grpc#36066)
    broken = SessionOperationError.from_call(
        _EndedCall(grpc.StatusCode.INTERNAL, "Internal error from Core")
    )
    assert broken.code() is grpc.StatusCode.UNAVAILABLE and "during a write" in broken.details()
    # a real INTERNAL from the controller stays what it is
    real = SessionOperationError.from_call(
        _EndedCall(grpc.StatusCode.INTERNAL, "Schedule: internal error")
    )
    assert real.code() is grpc.StatusCode.INTERNAL and "Schedule: internal error" in real.details()
    gone = SessionOperationError.from_call(_EndedCall(grpc.StatusCode.UNAVAILABLE, "reset"))
    assert gone.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"streams": 0}, "streams"), ({"max_batch": 0}, "max_batch")]
)
def test_session_arguments_are_checked_without_leaking_a_thread(kwargs, message):
    threads = threading.active_count()
    with pytest.raises(ValueError, match=message):
        ControllerSession("127.0.0.1:1", **kwargs)
    assert threading.active_count() == threads
