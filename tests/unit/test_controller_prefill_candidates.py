"""A request's prefill candidates (ScheduleRequest.prefill_candidates, the endpoint picker's
subset hint) restrict the prefill engine every policy may pick; empty means any."""

from __future__ import annotations

import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.convert import request_from_proto
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    NoCapacity,
    Request,
    Role,
    get_policy,
)

HBM = 1_000_000
POLICIES = ["paper", "prefill-only", "dualpath-split", "round-robin"]


def req(rid: str = "r", candidates: tuple[str, ...] = ()) -> Request:
    return Request(
        rid, 100, 90, 10, kv_bytes_per_token=10, prefill_candidates=frozenset(candidates)
    )


def view_of(pe_tokens: dict[str, int]) -> ClusterView:
    view = ClusterView()
    for i, (eid, tok) in enumerate(pe_tokens.items()):
        view.add_engine(EngineState(eid, Role.PREFILL, f"np{i}", unfinished_tokens=tok))
    view.add_engine(
        EngineState("d0", Role.DECODE, "nd0", hbm_capacity_tokens=HBM, free_hbm_tokens=HBM)
    )
    return view


@pytest.mark.parametrize("name", POLICIES)
def test_without_candidates_any_prefill_engine_may_be_picked(name):
    view = view_of({"p0": 0, "p1": 500})
    assert get_policy(name).schedule(view, req()).prefill_engine_id == "p0"


@pytest.mark.parametrize("name", POLICIES)
def test_candidates_restrict_the_prefill_engine_even_against_a_less_loaded_one(name):
    # p0 is idle and would win everywhere; only p1 and p2 are allowed.
    view = view_of({"p0": 0, "p1": 700, "p2": 300})
    policy = get_policy(name)
    picked = set()
    for i in range(4):
        request = req(f"r{i}", ("p1", "p2"))
        assignment = policy.schedule(view, request)
        view.apply(assignment, request)
        picked.add(assignment.prefill_engine_id)
    assert picked <= {"p1", "p2"}
    assert "p0" not in picked


def test_paper_picks_the_least_loaded_candidate():
    view = view_of({"p0": 0, "p1": 700, "p2": 300})
    assert get_policy("paper").schedule(view, req("r", ("p1", "p2"))).prefill_engine_id == "p2"


@pytest.mark.parametrize("name", POLICIES)
def test_candidates_that_are_unknown_or_drained_are_no_capacity_naming_the_candidates(name):
    view = view_of({"p0": 0, "p1": 0})
    view.set_drained("p1", True)
    with pytest.raises(NoCapacity, match="candidate prefill engines"):
        get_policy(name).schedule(view, req("r", ("p1", "p-unknown")))


def test_paper_batch_form_honours_each_requests_candidates():
    view = view_of({"p0": 0, "p1": 0})
    policy = get_policy("paper")
    requests = [req("a", ("p1",)), req("b"), req("c", ("p1",))]
    result = policy.schedule_batch(view, requests)
    by_id = {a.request_id: a.prefill_engine_id for a in result.assignments}
    assert by_id["a"] == "p1" and by_id["c"] == "p1"
    assert not result.unscheduled


def test_the_proto_field_reaches_the_policy_request():
    message = pb.ScheduleRequest(
        request_id="r", total_tokens=10, append_tokens=10, prefill_candidates=["p1", "p2"]
    )
    request = request_from_proto(message)
    assert request.prefill_candidates == frozenset({"p1", "p2"})
    assert request.may_prefill_on("p1") and not request.may_prefill_on("p0")
    assert request_from_proto(pb.ScheduleRequest(request_id="r", total_tokens=1)).may_prefill_on(
        "anything"
    )
