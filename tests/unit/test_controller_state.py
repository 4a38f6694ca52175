"""ControllerState: the server's state machine, driven with a hand-held clock."""

from __future__ import annotations

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.policy import get_policy
from dualpath_controller.state import ControllerError, ControllerState
from prometheus_client import generate_latest


def engine(eid: str, role: int, node: str, hbm: int = 0, endpoint: str = "") -> pb.Engine:
    return pb.Engine(
        engine_id=eid, role=role, node=node, hbm_capacity_tokens=hbm, agent_endpoint=endpoint
    )


def new_state(timeout: float = 2.0) -> ControllerState:
    state = ControllerState(get_policy("paper"), liveness_timeout_s=timeout)
    state.register(engine("p0", pb.ENGINE_ROLE_PREFILL, "np", endpoint="np:7000"), now=0)
    state.register(engine("d0", pb.ENGINE_ROLE_DECODE, "nd", hbm=10_000, endpoint="nd:7000"), 0)
    return state


def sched(rid: str, total: int = 1_000, cached: int = 900, **kw) -> pb.ScheduleRequest:
    return pb.ScheduleRequest(
        request_id=rid,
        total_tokens=total,
        cached_tokens=cached,
        append_tokens=max(0, total - cached),
        kv_bytes_per_token=kw.pop("kv", 10),
        **kw,
    )


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ControllerError) as info:
        fn()
    return info.value.code, info.value.message


def test_schedule_fills_in_nodes_endpoints_and_bytes():
    state = new_state()
    a = state.schedule(sched("r1")).assignment
    assert (a.prefill_engine_id, a.decode_engine_id) == ("p0", "d0")
    assert (a.prefill_node, a.decode_node) == ("np", "nd")
    assert (a.prefill_agent_endpoint, a.decode_agent_endpoint) == ("np:7000", "nd:7000")
    assert a.pe_read_bytes + a.de_read_bytes == 9_000
    assert a.policy == "paper" and a.reason


def test_schedule_is_idempotent_on_request_id():
    state = new_state()
    first = state.schedule(sched("r1"))
    again = state.schedule(sched("r1"))
    assert again.replayed and not first.replayed
    assert again.assignment == first.assignment
    assert state.counters.decisions == 1
    assert state.view.engines["d0"].unfinished_tokens == 1_000  # booked once
    # Still idempotent after completion (a late retry).
    state.finish("r1")
    assert state.schedule(sched("r1")).replayed
    assert state.view.engines["d0"].unfinished_tokens == 0


def test_reused_id_with_other_parameters_is_invalid():
    state = new_state()
    state.schedule(sched("r1"))
    code, message = code_of(lambda: state.schedule(sched("r1", cached=800)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "different parameters" in message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (sched("", 10, 0), "request_id"),
        (sched("r", 10, 11), "cached_tokens (11) > total_tokens (10)"),
        (sched("r", 0, 0), "total_tokens must be > 0"),
        (sched("r", 2**63, 0), "absurd"),  # what a negative number becomes in uint64
    ],
)
def test_bad_requests_are_invalid_argument(message, expected):
    code, text = code_of(lambda: new_state().schedule(message))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in text


def test_empty_roles_are_failed_precondition_and_full_cluster_resource_exhausted():
    state = ControllerState(get_policy("paper"))
    state.register(engine("p0", pb.ENGINE_ROLE_PREFILL, "np"), 0)
    code, text = code_of(lambda: state.schedule(sched("r")))
    assert (code, text) == (grpc.StatusCode.FAILED_PRECONDITION, "no decode engines registered")
    state.register(engine("d0", pb.ENGINE_ROLE_DECODE, "nd", hbm=1_500), 0)
    state.schedule(sched("r1"))
    code, text = code_of(lambda: state.schedule(sched("r2")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "free HBM" in text
    assert state.counters.rejected == 1
    state.finish("r1")
    assert state.schedule(sched("r2")).assignment.decode_engine_id == "d0"  # not lost: retried


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (engine("", pb.ENGINE_ROLE_PREFILL, "n"), "engine.engine_id must not be empty"),
        (engine("e", pb.ENGINE_ROLE_PREFILL, ""), "engine.node must not be empty"),
        (engine("e", pb.ENGINE_ROLE_UNSPECIFIED, "n"), "engine.role must be"),
        (engine("e", 7, "n"), "engine.role must be"),
        (engine("e", pb.ENGINE_ROLE_DECODE, "n"), "hbm_capacity_tokens must be > 0"),
        (engine("e", pb.ENGINE_ROLE_DECODE, "n", hbm=2**62), "absurd"),
    ],
)
def test_bad_registrations_are_invalid_argument(bad, expected):
    code, text = code_of(lambda: new_state().register(bad, 0))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in text


def test_reports_overwrite_load_and_stale_ones_are_ignored():
    state = new_state()
    report = pb.LoadReport(
        engine_id="p0",
        report_seq=5,
        unfinished_requests=2,
        unfinished_tokens=700,
        read_queue_tokens=40,
        read_queue_bytes=400,
        read_queue_length=1,
    )
    assert state.report(report, now=1)
    assert state.view.engines["p0"].unfinished_tokens == 700
    assert state.view.nodes["np"].read_queue_tokens == 40
    report.report_seq = 5
    report.unfinished_tokens = 1
    assert not state.report(report, now=1.1)  # same seq: stale
    assert state.view.engines["p0"].unfinished_tokens == 700
    assert state.counters.stale_reports == 1


def test_report_errors():
    state = new_state()
    code, text = code_of(lambda: state.report(pb.LoadReport(engine_id="ghost", report_seq=1), 0))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "RegisterEngine" in text
    code, text = code_of(lambda: state.report(pb.LoadReport(engine_id="p0"), 0))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "report_seq" in text
    too_free = pb.LoadReport(engine_id="d0", report_seq=1, free_hbm_tokens=10_001)
    code, text = code_of(lambda: state.report(too_free, 0))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "free_hbm_tokens" in text


def test_silent_engines_are_drained_and_return_when_they_report():
    state = new_state(timeout=2.0)
    state.report(pb.LoadReport(engine_id="p0", report_seq=1), now=1.5)
    assert state.sweep(now=2.5) == ["d0"]  # silent since registration at t=0
    assert state.view.engines["d0"].drained
    code, _ = code_of(lambda: state.schedule(sched("r")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert state.sweep(now=2.6) == []  # already drained: counted once
    state.report(pb.LoadReport(engine_id="d0", report_seq=1, free_hbm_tokens=10_000), now=3)
    assert not state.view.engines["d0"].drained
    assert state.sweep(now=3.4) == []  # p0 reported at 1.5: silent 1.9 s < 2 s
    assert state.sweep(now=3.6) == ["p0"]
    assert state.counters.drains == 2


def test_a_reported_agent_failure_drains_its_engines_until_a_later_report():
    state = new_state(timeout=10.0)
    holdoff = state.agent_failure_holdoff_s
    failure = pb.AgentFailureReport(agent_endpoint="nd:7000", reason="connection refused")
    assert state.agent_failed(failure, now=1.0) == ["d0"]
    assert state.view.engines["d0"].drained and not state.view.engines["p0"].drained
    code, _ = code_of(lambda: state.schedule(sched("r")))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED  # the only decode engine is out
    assert state.agent_failed(failure, now=1.1) == []  # already drained: counted once
    # A report sent before the agent could be back (within the holdoff) proves nothing.
    state.report(pb.LoadReport(engine_id="d0", report_seq=1, free_hbm_tokens=10_000), 1.2)
    assert state.view.engines["d0"].drained
    state.report(pb.LoadReport(engine_id="d0", report_seq=2, free_hbm_tokens=10_000), 1.1 + holdoff)
    assert not state.view.engines["d0"].drained
    assert state.schedule(sched("r2")).assignment.decode_engine_id == "d0"
    assert state.counters.agent_failures == 2 and state.counters.drains == 1


def test_agent_failure_reports_are_validated_and_unknown_agents_drain_nothing():
    state = new_state()
    code, text = code_of(lambda: state.agent_failed(pb.AgentFailureReport(), now=0))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "agent_endpoint" in text
    unknown = pb.AgentFailureReport(agent_endpoint="elsewhere:1", reason="x" * 10_000)
    assert state.agent_failed(unknown, now=0) == []


def test_complete_and_cancel_release_and_unknown_ids_are_not_found():
    state = new_state()
    state.schedule(sched("r1"))
    state.schedule(sched("r2"))
    state.finish("r1")
    state.finish("r2", cancelled=True, reason="client went away")
    state.finish("r1")  # repeat: no-op
    assert state.view.engines["d0"].unfinished_tokens == 0
    assert state.view.engines["d0"].free_hbm_tokens == 10_000
    assert (state.counters.completed, state.counters.cancelled) == (1, 1)
    code, _ = code_of(lambda: state.finish("never"))
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: state.finish(""))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_deregistered_engines_leave_and_their_requests_still_complete():
    state = new_state()
    state.register(engine("p1", pb.ENGINE_ROLE_PREFILL, "np2"), 0)
    a = state.schedule(sched("r1")).assignment
    state.deregister(a.prefill_engine_id)
    state.finish("r1")
    assert state.schedule(sched("r2")).assignment.prefill_engine_id != a.prefill_engine_id
    code, _ = code_of(lambda: state.deregister("ghost"))
    assert code is grpc.StatusCode.NOT_FOUND


def test_status_and_metrics_show_the_cluster():
    state = new_state()
    state.report(pb.LoadReport(engine_id="p0", report_seq=1, read_queue_tokens=5), now=1)
    state.schedule(sched("r1"))
    status = state.status(now=1.5)
    assert status.policy == "paper" and status.decisions_total == 1
    assert status.in_flight_requests == 1
    assert dict(status.policy_params)["z"] == pytest.approx(1.05)
    by_id = {e.engine.engine_id: e for e in status.engines}
    assert by_id["p0"].report_age_s == pytest.approx(0.5)
    assert by_id["p0"].last_report.read_queue_tokens == 5
    assert by_id["d0"].assigned_requests == 1 and by_id["d0"].unfinished_tokens == 1_000
    assert [n.node for n in status.nodes] == ["nd", "np"]
    text = generate_latest(state.metrics.registry).decode()
    assert 'dualpath_controller_decisions_total{path="de_read",policy="paper"} 1.0' in text
    assert (
        'dualpath_controller_engine_unfinished_tokens{engine="d0",node="nd",role="decode"} 1000.0'
        in text
    )
    assert "dualpath_controller_decision_latency_seconds_count" in text
    assert 'dualpath_controller_node_read_queue_tokens{node="nd"} 900.0' in text


def test_forgotten_requests_expire_and_give_their_load_back():
    state = ControllerState(get_policy("paper"), liveness_timeout_s=1e9, request_ttl_s=10)
    state.register(engine("p0", pb.ENGINE_ROLE_PREFILL, "np"), 0)
    state.register(engine("d0", pb.ENGINE_ROLE_DECODE, "nd", hbm=10_000), 0)
    state.schedule(sched("old"), now=0)
    state.schedule(sched("new"), now=5)
    state.sweep(now=10)  # "old" is exactly 10 s old: kept
    assert set(state.in_flight) == {"old", "new"}
    state.sweep(now=12)
    assert set(state.in_flight) == {"new"}
    assert state.counters.expired == 1
    assert state.view.engines["d0"].unfinished_tokens == 1_000
    text = generate_latest(state.metrics.registry).decode()
    assert 'dualpath_controller_requests_finished_total{outcome="expired"} 1.0' in text
