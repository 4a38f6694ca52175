"""ClusterView bookkeeping: apply/release, reports, draining, and its indexes."""

from __future__ import annotations

import pytest
from dualpath_controller.policy import (
    Assignment,
    ClusterView,
    EngineState,
    ReadPath,
    Request,
    Role,
)

HBM = 1_000


def view_with_pair() -> ClusterView:
    view = ClusterView()
    view.add_engine(EngineState("p", Role.PREFILL, "np"))
    view.add_engine(
        EngineState("d", Role.DECODE, "nd", group="g", hbm_capacity_tokens=HBM, free_hbm_tokens=HBM)
    )
    return view


def assignment(rid: str, fraction: float = 0.25) -> Assignment:
    path = ReadPath.SPLIT if 0 < fraction < 1 else ReadPath.PE_READ
    return Assignment(rid, "p", "d", path, fraction, "test", "hand-made")


REQ = Request(
    "r",
    total_tokens=100,
    cached_tokens=80,
    append_tokens=20,
    expected_output_tokens=50,
    kv_bytes_per_token=4,
)


def test_apply_books_both_engines_hbm_and_both_read_queues():
    view = view_with_pair()
    view.apply(assignment("r"), REQ)
    p, d = view.engines["p"], view.engines["d"]
    assert (p.unfinished_requests, p.unfinished_tokens) == (1, 100)
    assert (d.unfinished_requests, d.unfinished_tokens, d.free_hbm_tokens) == (1, 100, 850)
    # 80 cached tokens, a quarter read on the decode side.
    assert (view.nodes["np"].read_queue_tokens, view.nodes["np"].read_queue_bytes) == (60, 240)
    assert (view.nodes["nd"].read_queue_tokens, view.nodes["nd"].read_queue_bytes) == (20, 80)
    view.check_invariants()


def test_release_steps_are_idempotent_and_restore_everything():
    view = view_with_pair()
    view.apply(assignment("r"), REQ)
    view.finish_read("r")
    view.finish_read("r")
    assert view.nodes["np"].read_queue_tokens == view.nodes["nd"].read_queue_tokens == 0
    assert view.engines["p"].unfinished_tokens == 100
    view.finish_prefill("r")
    view.finish_prefill("r")
    assert view.engines["p"].unfinished_tokens == 0
    assert view.engines["d"].unfinished_tokens == 100
    booking = view.release("r")
    assert (booking.request_id, booking.total_tokens) == (REQ.request_id, REQ.total_tokens)
    assert booking.hbm_tokens == REQ.total_tokens + REQ.expected_output_tokens
    assert view.engines["d"].unfinished_tokens == 0
    assert view.engines["d"].free_hbm_tokens == HBM
    assert not view.bookings
    with pytest.raises(KeyError):
        view.release("r")
    view.check_invariants()


def test_double_booking_and_mismatched_ids_are_refused():
    view = view_with_pair()
    view.apply(assignment("r"), REQ)
    with pytest.raises(ValueError, match="already booked"):
        view.apply(assignment("r"), REQ)
    with pytest.raises(ValueError, match="assignment is for"):
        view.apply(assignment("other"), REQ)


def test_reports_overwrite_and_release_clamps_at_zero():
    view = view_with_pair()
    view.apply(assignment("r"), REQ)
    # The engine reports it already finished most of its work.
    view.update_engine_load("d", unfinished_requests=0, unfinished_tokens=30, free_hbm_tokens=990)
    view.release("r")
    d = view.engines["d"]
    assert (d.unfinished_requests, d.unfinished_tokens) == (0, 0)
    assert d.free_hbm_tokens == HBM  # capped at capacity
    view.check_invariants()


def test_draining_and_removal_keep_indexes_right():
    view = ClusterView()
    for i, tokens in enumerate([30, 10, 20]):
        view.add_engine(
            EngineState(
                f"d{i}",
                Role.DECODE,
                f"n{i % 2}",
                unfinished_tokens=tokens,
                hbm_capacity_tokens=HBM,
                free_hbm_tokens=HBM,
            )
        )
    assert list(view.active_by_tokens(Role.DECODE)) == [(10, "d1"), (20, "d2"), (30, "d0")]
    assert list(view.groups_by_tokens()) == [(10, "n1"), (50, "n0")]
    view.set_drained("d0", True)
    assert list(view.groups_by_tokens()) == [(10, "n1"), (20, "n0")]
    view.update_engine_load("d0", unfinished_tokens=0)  # drained engines still take reports
    view.set_drained("d0", False)
    assert view.active_by_tokens(Role.DECODE)[0] == (0, "d0")
    view.remove_engine("d1")
    assert list(view.groups_by_tokens()) == [(20, "n0")]
    assert list(view.engine_ids(Role.DECODE)) == ["d0", "d2"]
    view.check_invariants()


def test_reregistering_replaces_the_engine():
    view = view_with_pair()
    view.add_engine(EngineState("p", Role.PREFILL, "np2", unfinished_tokens=7))
    assert view.engines["p"].node == "np2"
    assert list(view.active_by_tokens(Role.PREFILL)) == [(7, "p")]
    view.check_invariants()


def test_release_after_an_engine_left_does_not_fail():
    view = view_with_pair()
    view.apply(assignment("r"), REQ)
    view.remove_engine("d")
    view.release("r")
    assert view.engines["p"].unfinished_tokens == 0


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (EngineState("", Role.PREFILL, "n"), "engine_id"),
        (EngineState("e", Role.PREFILL, ""), "node"),
        (EngineState("e", Role.PREFILL, "n", unfinished_tokens=-1), "unfinished_tokens"),
        (EngineState("e", Role.DECODE, "n", free_hbm_tokens=-1), "free_hbm_tokens"),
    ],
)
def test_bad_engines_are_refused(engine, message):
    with pytest.raises(ValueError, match=message):
        ClusterView().add_engine(engine)
