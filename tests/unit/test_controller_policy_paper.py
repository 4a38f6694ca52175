"""The paper's scheduler (§6, §A.4) pinned on hand-worked cases."""

from __future__ import annotations

import pytest
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    NoCapacity,
    ReadPath,
    Request,
    Role,
    get_policy,
)

ALPHA = 1_000
BETA = 10_000
HBM = 1_000_000


def req(rid: str = "r", total: int = 100, cached: int = 90, out: int = 0) -> Request:
    return Request(rid, total, cached, total - cached, out, kv_bytes_per_token=10)


def pe(eid: str, node: str, tok: int = 0, seq: int = 0) -> EngineState:
    return EngineState(eid, Role.PREFILL, node, unfinished_tokens=tok, unfinished_requests=seq)


def de(
    eid: str, node: str, tok: int = 0, seq: int = 0, free: int = HBM, group: str = ""
) -> EngineState:
    return EngineState(
        eid,
        Role.DECODE,
        node,
        group=group,
        hbm_capacity_tokens=HBM,
        unfinished_tokens=tok,
        unfinished_requests=seq,
        free_hbm_tokens=free,
    )


def cluster(*engines: EngineState, queues: dict[str, int] | None = None) -> ClusterView:
    view = ClusterView()
    for engine in engines:
        view.add_engine(engine)
    for node, tokens in (queues or {}).items():
        view.update_node_load(node, read_queue_tokens=tokens)
    return view


def paper():
    return get_policy("paper", alpha=ALPHA, beta=BETA, z=1.05)


def score(assignment, rule: str) -> float:
    return next(s.value for s in assignment.scores if s.rule == rule)


# ----- prefill engine: alpha/beta classes -----


def test_preferred_class_beats_lower_tokens_on_a_busy_node():
    # p-busy has fewer tokens but its node's read queue is over alpha.
    view = cluster(
        pe("p-busy", "n1", tok=10),
        pe("p-calm", "n2", tok=500),
        de("d", "n3"),
        queues={"n1": ALPHA + 1, "n2": 0},
    )
    a = paper().schedule(view, req())
    assert a.prefill_engine_id == "p-calm"
    assert a.scores[0].rule == "pe-preferred"


def test_read_queue_equal_to_alpha_is_still_preferred():
    view = cluster(
        pe("p-at-alpha", "n1", tok=10),
        pe("p-calm", "n2", tok=500),
        de("d", "n3"),
        queues={"n1": ALPHA},
    )
    assert paper().schedule(view, req()).prefill_engine_id == "p-at-alpha"


def test_busy_class_used_only_when_no_preferred_engine_is_left():
    view = cluster(
        pe("p1", "n1", tok=300),
        pe("p2", "n2", tok=200),
        de("d", "n3"),
        queues={"n1": ALPHA + 5, "n2": ALPHA + 500},
    )
    a = paper().schedule(view, req())
    # Both over alpha: the smallest tok_e wins, regardless of which queue is longer.
    assert a.prefill_engine_id == "p2"
    assert a.scores[0].rule == "pe-read-queue-over-alpha"


def test_overloaded_engines_get_nothing_even_when_preferred():
    view = cluster(
        pe("p-over", "n1", tok=BETA + 1),
        pe("p-busy", "n2", tok=BETA - 1),
        de("d", "n3"),
        queues={"n2": ALPHA + 1},
    )
    assert paper().schedule(view, req()).prefill_engine_id == "p-busy"


def test_tok_equal_to_beta_is_not_overloaded():
    view = cluster(pe("p", "n1", tok=BETA), de("d", "n3"))
    assert paper().schedule(view, req()).prefill_engine_id == "p"


def test_all_prefill_engines_overloaded_is_no_capacity():
    view = cluster(pe("p1", "n1", tok=BETA + 1), pe("p2", "n1", tok=BETA + 7), de("d", "n3"))
    with pytest.raises(NoCapacity, match="overloaded"):
        paper().schedule(view, req())


def test_ties_in_tokens_go_to_the_smallest_engine_id():
    view = cluster(pe("p-b", "n1", tok=5), pe("p-a", "n2", tok=5), de("d", "n3"))
    assert paper().schedule(view, req()).prefill_engine_id == "p-a"


def test_tok_e_is_updated_after_each_assignment():
    view = cluster(pe("p1", "n1"), pe("p2", "n1", tok=150), de("d", "n3"))
    policy = paper()
    chosen = []
    for i in range(3):
        r = req(f"r{i}", total=100, cached=0)
        a = policy.schedule(view, r)
        view.apply(a, r)
        chosen.append(a.prefill_engine_id)
    # p1: 0 -> 100 -> (p2 at 150 vs p1 at 100) p1 -> 200; then p2 (150) < p1 (200).
    assert chosen == ["p1", "p1", "p2"]
    assert view.engines["p1"].unfinished_tokens == 200
    assert view.engines["p2"].unfinished_tokens == 250


def test_drained_prefill_engine_is_never_chosen():
    view = cluster(pe("p-idle", "n1"), pe("p2", "n2", tok=900), de("d", "n3"))
    view.set_drained("p-idle", True)
    assert paper().schedule(view, req()).prefill_engine_id == "p2"
    view.set_drained("p2", True)
    with pytest.raises(NoCapacity, match="drained"):
        paper().schedule(view, req())


# ----- decode engine: group, then the Z rule -----


def test_group_with_smallest_total_tokens_wins_over_a_single_idle_engine():
    view = cluster(
        pe("p", "n0"),
        de("a1", "na", tok=0),
        de("a2", "na", tok=1_000),  # group na total 1000, though a1 is idle
        de("b1", "nb", tok=100),
        de("b2", "nb", tok=100),  # group nb total 200
    )
    a = paper().schedule(view, req())
    assert a.decode_engine_id in ("b1", "b2")
    assert score(a, "de-group-tokens") == 200


def test_under_z_prefers_fewest_unfinished_requests():
    # len(r)=100; Z = 1.05 * (100 + 0 + 100 + 1000) / 3 = 420.
    view = cluster(
        pe("p", "n0"),
        de("d-idle-tokens", "g", tok=0, seq=5),
        de("d-few-requests", "g", tok=100, seq=1),
        de("d-heavy", "g", tok=1_000, seq=0),  # fewest requests but tok+len > Z
    )
    a = paper().schedule(view, req(total=100))
    assert score(a, "z-threshold") == pytest.approx(420.0)
    assert a.decode_engine_id == "d-few-requests"
    assert a.scores[1].rule == "de-under-z"


def test_no_engine_under_z_falls_back_to_smallest_tokens():
    # len(r)=1000; Z = 1.05 * (1000 + 1000 + 1200) / 2 = 1680; 1000+1000 and 1200+1000 > Z.
    view = cluster(
        pe("p", "n0"),
        de("d1", "g", tok=1_000, seq=9),
        de("d2", "g", tok=1_200, seq=0),
    )
    a = paper().schedule(view, req(total=1_000, cached=900))
    assert score(a, "z-threshold") == pytest.approx(1680.0)
    assert a.decode_engine_id == "d1"
    assert a.scores[1].rule == "de-min-tokens"


def test_de_ties_break_by_seq_then_id():
    view = cluster(pe("p", "n0"), de("d2", "g", tok=50), de("d1", "g", tok=50))
    # Z = 1.05 * (100 + 100) / 2 = 105: 50+100 > 105, fall back to tokens: tie -> seq -> id.
    assert paper().schedule(view, req()).decode_engine_id == "d1"


def test_decode_engine_without_free_hbm_is_skipped():
    view = cluster(
        pe("p", "n0"),
        de("d-full", "g", tok=0, free=150),  # request needs 100 + 100 output = 200
        de("d-room", "g", tok=5_000, free=HBM),
    )
    a = paper().schedule(view, req(total=100, out=100))
    assert a.decode_engine_id == "d-room"


def test_group_that_cannot_fit_the_request_is_skipped():
    view = cluster(
        pe("p", "n0"),
        de("a", "light", tok=0, free=10),
        de("b", "heavy", tok=9_000, free=HBM),
    )
    assert paper().schedule(view, req()).decode_engine_id == "b"


def test_no_decode_engine_with_hbm_is_no_capacity():
    view = cluster(pe("p", "n0"), de("d", "n1", free=50))
    with pytest.raises(NoCapacity, match="free HBM"):
        paper().schedule(view, req())


def test_drained_decode_engines_leave_the_group_totals():
    view = cluster(
        pe("p", "n0"),
        de("a1", "na", tok=0),
        de("a2", "na", tok=5_000),
        de("b1", "nb", tok=1_000),
    )
    # na total 5000 > nb 1000: nb. With a2 drained, na's total is 0: a1.
    assert paper().schedule(view, req()).decode_engine_id == "b1"
    view.set_drained("a2", True)
    assert paper().schedule(view, req()).decode_engine_id == "a1"


# ----- read path -----


def test_reads_on_the_side_with_the_shorter_queue():
    view = cluster(pe("p", "np"), de("d", "nd"), queues={"np": 500, "nd": 100})
    a = paper().schedule(view, req())
    assert (a.read_path, a.de_read_fraction) == (ReadPath.DE_READ, 1.0)
    view.update_node_load("nd", read_queue_tokens=501)
    a = paper().schedule(view, req())
    assert (a.read_path, a.de_read_fraction) == (ReadPath.PE_READ, 0.0)


def test_equal_queues_read_on_the_prefill_side():
    view = cluster(pe("p", "np"), de("d", "nd"), queues={"np": 300, "nd": 300})
    a = paper().schedule(view, req())
    assert a.read_path is ReadPath.PE_READ
    assert "queues-equal-pe" in a.reason


def test_nothing_cached_reads_nothing_extra():
    view = cluster(pe("p", "np"), de("d", "nd"), queues={"np": 300})
    a = paper().schedule(view, req(cached=0))
    assert (a.read_path, a.de_read_fraction) == (ReadPath.PE_READ, 0.0)


def test_booked_reads_alternate_the_path():
    view = cluster(pe("p", "np"), de("d", "nd"))
    policy = paper()
    paths = []
    for i in range(4):
        r = req(f"r{i}", total=100, cached=90)
        a = policy.schedule(view, r)
        view.apply(a, r)
        paths.append(a.read_path)
    # tie -> PE; PE queue 90 > 0 -> DE; tie at 90 -> PE; PE 180 > 90 -> DE.
    assert paths == [ReadPath.PE_READ, ReadPath.DE_READ] * 2
    assert view.nodes["np"].read_queue_tokens == 180
    assert view.nodes["nd"].read_queue_tokens == 180
    assert view.nodes["np"].read_queue_bytes == 1800


# ----- batch form -----


def test_batch_uses_one_z_for_the_queued_set():
    view = cluster(pe("p", "n0"), de("d1", "g"), de("d2", "g"))
    requests = [req(f"r{i}", total=100) for i in range(3)]
    result = paper().schedule_batch(view, requests)
    # Z = 1.05 * (300 + 0) / 2 = 157.5 for all three.
    assert [score(a, "z-threshold") for a in result.assignments] == [157.5] * 3
    # r0: both under Z, tie -> d1. r1: d1 at 200 > Z -> d2. r2: none under -> min tok -> d1.
    assert [a.decode_engine_id for a in result.assignments] == ["d1", "d2", "d1"]
    assert not result.unscheduled
    assert set(view.bookings) == {"r0", "r1", "r2"}


def test_batch_takes_the_fifo_prefix_that_fits_the_group_hbm():
    view = cluster(
        pe("p", "n0"),
        de("a", "ga", free=250),  # fits two 100-token requests
        de("b", "gb", tok=10_000),
    )
    result = paper().schedule_batch(view, [req(f"r{i}") for i in range(3)])
    assert [a.decode_engine_id for a in result.assignments] == ["a", "a", "b"]
    assert score(result.assignments[0], "z-threshold") == pytest.approx(1.05 * 200)


def test_batch_stops_at_the_head_that_finds_no_capacity():
    view = cluster(pe("p", "n0"), de("d", "g", free=250))
    requests = [req("r0"), req("r1"), req("r2"), req("small", total=10, cached=0)]
    result = paper().schedule_batch(view, requests)
    assert [a.request_id for a in result.assignments] == ["r0", "r1"]
    # FIFO: the small request behind the blocked head waits too.
    assert [r.request_id for r in result.unscheduled] == ["r2", "small"]
    assert "free HBM" in result.blocked_reason


def test_single_schedule_equals_batch_of_one():
    def build():
        return cluster(
            pe("p1", "n1", tok=40),
            pe("p2", "n2", tok=10),
            de("d1", "g1", tok=100, seq=2),
            de("d2", "g1", tok=0, seq=3),
            de("d3", "g2", tok=50),
            queues={"n2": ALPHA + 1, "g1": 30},
        )

    single_view, batch_view = build(), build()
    r = req(total=60, cached=50)
    single = paper().schedule(single_view, r)
    batch = paper().schedule_batch(batch_view, [r]).assignments[0]
    assert single == batch
