"""prefill-only, round-robin, dualpath-split and the policy registry."""

from __future__ import annotations

import pytest
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    NoCapacity,
    ReadPath,
    Request,
    Role,
    alpha_for,
    balanced_de_fraction,
    beta_for,
    get_policy,
    parse_policy_params,
    policy_names,
)

HBM = 10**9
GB = 10**9


def req(rid: str = "r", total: int = 1_000, cached: int = 1_000, kv: int = 1_000_000) -> Request:
    # 1,000 cached tokens x 1 MB = 1 GB to read by default.
    return Request(rid, total, cached, total - cached, 0, kv_bytes_per_token=kv)


def two_node_view(pe_node: str = "np", de_node: str = "nd") -> ClusterView:
    view = ClusterView()
    view.add_engine(EngineState("p", Role.PREFILL, pe_node))
    view.add_engine(
        EngineState("d", Role.DECODE, de_node, hbm_capacity_tokens=HBM, free_hbm_tokens=HBM)
    )
    for node in {pe_node, de_node}:
        view.update_node_load(node, snic_read_bytes_per_s=50 * GB)
    return view


# ----- prefill-only -----


def test_prefill_only_always_reads_on_the_prefill_side():
    view = two_node_view()
    view.update_node_load("np", read_queue_tokens=10**6, read_queue_bytes=10**12)
    policy = get_policy("prefill-only")
    a = policy.schedule(view, req())
    assert (a.read_path, a.de_read_fraction, a.policy) == (ReadPath.PE_READ, 0.0, "prefill-only")
    # The same engine choice as the paper's policy.
    b = get_policy("paper").schedule(view, req())
    assert (a.prefill_engine_id, a.decode_engine_id) == (b.prefill_engine_id, b.decode_engine_id)
    assert b.read_path is ReadPath.DE_READ


# ----- round-robin -----


def rr_view(n_pe: int = 3, n_de: int = 2) -> ClusterView:
    view = ClusterView()
    for i in range(n_pe):
        view.add_engine(EngineState(f"p{i}", Role.PREFILL, f"np{i}"))
    for i in range(n_de):
        view.add_engine(
            EngineState(
                f"d{i}", Role.DECODE, f"nd{i}", hbm_capacity_tokens=HBM, free_hbm_tokens=HBM
            )
        )
    return view


def run(policy, view: ClusterView, n: int, prefix: str = "r"):
    out = []
    for i in range(n):
        r = req(f"{prefix}{i}")
        a = policy.schedule(view, r)
        view.apply(a, r)
        out.append(a)
    return out


def test_round_robin_cycles_engines_and_alternates_paths():
    view = rr_view()
    got = run(get_policy("round-robin"), view, 4)
    assert [a.prefill_engine_id for a in got] == ["p0", "p1", "p2", "p0"]
    assert [a.decode_engine_id for a in got] == ["d0", "d1", "d0", "d1"]
    assert [a.read_path for a in got] == [ReadPath.PE_READ, ReadPath.DE_READ] * 2


def test_round_robin_skips_drained_and_overloaded_engines():
    view = rr_view()
    view.set_drained("p1", True)
    view.update_engine_load("p2", unfinished_tokens=5_000)
    got = run(get_policy("round-robin", beta=4_000), view, 2)
    assert [a.prefill_engine_id for a in got] == ["p0", "p0"]


def test_round_robin_cursor_survives_new_registrations():
    view = rr_view()
    policy = get_policy("round-robin")
    run(policy, view, 2)  # p0, p1
    view.add_engine(EngineState("p10", Role.PREFILL, "np10"))  # sorts between p1 and p2
    got = run(policy, view, 3, prefix="s")
    assert [a.prefill_engine_id for a in got] == ["p10", "p2", "p0"]


def test_round_robin_refusal_does_not_advance_the_cursor():
    view = rr_view(n_pe=2, n_de=1)
    policy = get_policy("round-robin")
    run(policy, view, 1)  # p0
    view.set_drained("d0", True)
    with pytest.raises(NoCapacity, match="drained"):
        policy.schedule(view, req("x"))
    view.set_drained("d0", False)
    assert policy.schedule(view, req("y")).prefill_engine_id == "p1"


# ----- dualpath-split -----


def test_balanced_fraction_equalises_finish_times():
    # Equal bandwidth, empty queues: half and half.
    assert balanced_de_fraction(0, 0, 100, 1.0, 1.0) == pytest.approx(0.5)
    # DE side twice as fast: two thirds there. Both finish at 100/3 units.
    f = balanced_de_fraction(0, 0, 100, 1.0, 2.0)
    assert f == pytest.approx(2 / 3)
    assert (1 - f) * 100 / 1.0 == pytest.approx(f * 100 / 2.0)
    # PE side 50 behind: DE takes 75, PE 25; both finish at 75.
    assert balanced_de_fraction(50, 0, 100, 1.0, 1.0) == pytest.approx(0.75)
    # Much better side: clamped to the pure paths.
    assert balanced_de_fraction(1_000, 0, 100, 1.0, 1.0) == 1.0
    assert balanced_de_fraction(0, 1_000, 100, 1.0, 1.0) == 0.0


def test_split_policy_splits_an_even_cluster_in_half():
    view = two_node_view()
    a = get_policy("dualpath-split").schedule(view, req())
    assert a.read_path is ReadPath.SPLIT
    assert a.de_read_fraction == pytest.approx(0.5)
    finish = next(s.value for s in a.scores if s.rule == "expected-finish-s")
    assert finish == pytest.approx(0.5 * GB / (50 * GB))


def test_split_policy_uses_reported_bandwidth_and_pending_bytes():
    view = two_node_view()
    view.update_node_load("np", read_queue_bytes=1 * GB)
    view.update_node_load("nd", snic_read_bytes_per_s=100 * GB)
    # f = (100 * (1 + 1) - 50 * 0) / (1 * 150) = 4/3 -> DE side is much better.
    a = get_policy("dualpath-split").schedule(view, req())
    assert (a.read_path, a.de_read_fraction) == (ReadPath.DE_READ, 1.0)
    view.update_node_load("np", read_queue_bytes=0)
    # f = (100 * 1) / 150 = 2/3.
    a = get_policy("dualpath-split").schedule(view, req())
    assert a.read_path is ReadPath.SPLIT
    assert a.de_read_fraction == pytest.approx(2 / 3)


def test_split_books_both_sides_so_the_next_request_sees_them():
    view = two_node_view()
    r = req()
    a = get_policy("dualpath-split").schedule(view, r)
    view.apply(a, r)
    assert view.nodes["np"].read_queue_bytes == GB // 2
    assert view.nodes["nd"].read_queue_bytes == GB // 2
    assert view.nodes["np"].read_queue_length == view.nodes["nd"].read_queue_length == 1
    view.finish_read("r")
    assert view.nodes["np"].read_queue_bytes == view.nodes["nd"].read_queue_bytes == 0


def test_thin_splits_fold_into_the_faster_side():
    view = two_node_view()
    # PE side 0.92 GB behind: f = (0.92 + 1) / 2 = 0.96, a 4% PE share < min_split_fraction.
    view.update_node_load("np", read_queue_bytes=int(0.92 * GB))
    a = get_policy("dualpath-split").schedule(view, req())
    assert (a.read_path, a.de_read_fraction) == (ReadPath.DE_READ, 1.0)
    assert "split-not-worth-it" in a.reason
    # With folding off, the thin split stands.
    a = get_policy("dualpath-split", min_split_fraction=0).schedule(view, req())
    assert a.de_read_fraction == pytest.approx(0.96)


def test_small_reads_are_not_split():
    view = two_node_view()
    a = get_policy("dualpath-split", min_split_bytes=2 * GB).schedule(view, req())
    assert a.read_path is ReadPath.PE_READ  # tie in finish time -> prefill side


def test_split_on_one_node_or_unknown_bytes():
    view = two_node_view(pe_node="n", de_node="n")
    assert get_policy("dualpath-split").schedule(view, req()).read_path is ReadPath.PE_READ
    view = two_node_view()
    view.update_node_load("np", read_queue_tokens=10)
    a = get_policy("dualpath-split").schedule(view, req(kv=0))
    assert a.read_path is ReadPath.DE_READ  # fell back to the paper's queue rule


def pooled_view(n_pe: int, n_de: int) -> ClusterView:
    """n_pe prefill nodes and n_de decode nodes, one engine each, equal 50 GB/s SNICs."""
    view = ClusterView()
    for i in range(n_pe):
        view.add_engine(EngineState(f"p{i}", Role.PREFILL, f"np{i}"))
        view.update_node_load(f"np{i}", snic_read_bytes_per_s=50 * GB)
    for i in range(n_de):
        view.add_engine(
            EngineState(
                f"d{i}", Role.DECODE, f"nd{i}", hbm_capacity_tokens=HBM, free_hbm_tokens=HBM
            )
        )
        view.update_node_load(f"nd{i}", snic_read_bytes_per_s=50 * GB)
    return view


def test_view_tracks_the_nodes_serving_each_role():
    view = pooled_view(1, 2)
    assert list(view.role_nodes(Role.PREFILL)) == ["np0"]
    assert list(view.role_nodes(Role.DECODE)) == ["nd0", "nd1"]
    view.set_drained("d1", True)
    assert list(view.role_nodes(Role.DECODE)) == ["nd0"]
    view.set_drained("d1", False)
    view.remove_engine("d0")
    assert list(view.role_nodes(Role.DECODE)) == ["nd1"]
    view.add_engine(EngineState("p9", Role.PREFILL, "np9"))
    assert list(view.role_nodes(Role.PREFILL)) == ["np0", "np9"]


def test_pooled_fraction_counts_every_decode_snic():
    # One prefill SNIC against two decode SNICs, all idle: the pooled rule reads 2/3 on the
    # decode side (each decode node serves half the requests, so every SNIC gets 1/3), the
    # two-node rule 1/2; the default blends them half and half.
    view = pooled_view(1, 2)
    pooled = get_policy("dualpath-split", pool_weight=1).schedule(view, req())
    assert pooled.de_read_fraction == pytest.approx(2 / 3)
    two_node = get_policy("dualpath-split", pool_weight=0).schedule(view, req())
    assert two_node.de_read_fraction == pytest.approx(0.5)
    blended = get_policy("dualpath-split").schedule(view, req())
    assert blended.de_read_fraction == pytest.approx(0.5 * 2 / 3 + 0.5 * 0.5)
    scores = {s.rule: s.value for s in blended.scores}
    assert scores["pooled-de-fraction"] == pytest.approx(2 / 3)
    assert scores["two-node-de-fraction"] == pytest.approx(0.5)


def test_pooled_fraction_sees_queues_on_nodes_not_chosen():
    # The other decode node's backlog counts against the decode pool: less goes there.
    view = pooled_view(1, 2)
    view.update_node_load("nd1", read_queue_bytes=3 * GB)
    a = get_policy("dualpath-split", pool_weight=1).schedule(view, req())
    # Pool finish times equal: (0 + (1 - f)) / 50 = (3 + f) / 100  ->  f = -1/3 -> PE only.
    assert a.decode_engine_id == "d0"
    assert (a.read_path, a.de_read_fraction) == (ReadPath.PE_READ, 0.0)


def _snic_bytes_spread(pool_weight: float) -> float:
    """Max over mean of per-node booked bytes after 60 requests, one at a time (each read
    finishes before the next request: the idle-queue case), on a 1P2D cluster."""
    view = pooled_view(1, 2)
    policy = get_policy("dualpath-split", pool_weight=pool_weight)
    read: dict[str, int] = {}
    for i in range(60):
        r = req(f"r{i}")
        booking = view.apply(policy.schedule(view, r), r)
        read[booking.pe_node] = read.get(booking.pe_node, 0) + booking.pe_read_bytes
        read[booking.de_node] = read.get(booking.de_node, 0) + booking.de_read_bytes
        view.finish_read(r.request_id)  # engines keep the load, so DEs take turns
    values = [read.get(n, 0) for n in ("np0", "nd0", "nd1")]
    return max(values) / (sum(values) / len(values))


def test_pooling_spreads_bytes_over_all_snics():
    two_node = _snic_bytes_spread(0.0)
    blended = _snic_bytes_spread(0.5)
    pooled = _snic_bytes_spread(1.0)
    # Two-node rule: half of every read lands on the one prefill SNIC (30 GB vs 15 + 15).
    assert two_node == pytest.approx(1.5)
    assert pooled < blended < two_node
    assert pooled == pytest.approx(1.0, abs=0.01)


# ----- registry -----


def test_registry_knows_the_four_policies():
    assert policy_names() == ["paper", "prefill-only", "round-robin", "dualpath-split"]
    for name in policy_names():
        assert get_policy(name).name == name


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "unknown policy 'nope'"),
        ("paper", {"gamma": 1}, "no parameter 'gamma'"),
        ("round-robin", {"alpha": 1}, "no parameter 'alpha'"),
        ("paper", {"alpha": "lots"}, "parameter 'alpha': expected a number"),
        ("paper", {"alpha": 1.5}, "must be a whole number"),
        ("paper", {"beta": 0}, "out of range"),
        ("paper", {"z": 0.9}, "'z'=0.9 out of range"),
        ("paper", {"z": float("nan")}, "must be finite"),
        ("paper", {"z": True}, "expected a number"),
        ("dualpath-split", {"min_split_fraction": 0.7}, "out of range"),
    ],
)
def test_bad_policy_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_policy(name, **params)


def test_parameters_accept_strings_from_the_command_line():
    params = parse_policy_params(["alpha=3.5e6", "beta = 1_000_000", "z=1.1"])
    policy = get_policy("paper", **params)
    assert policy.params == {"alpha": 3_500_000, "beta": 1_000_000, "z": 1.1}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_policy_params(["alpha"])


def test_alpha_and_beta_follow_the_paper_definitions():
    # 50 GB/s for 3 s at 40,016 B/token (DS 660B).
    assert alpha_for(50e9, 40_016) == 3_748_500
    assert beta_for(200_000) == 1_000_000
    assert get_policy("paper").params["alpha"] == 3_748_500


# ----- request validation -----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"request_id": ""}, "request_id"),
        ({"total_tokens": 0, "cached_tokens": 0, "append_tokens": 0}, "total_tokens must be > 0"),
        ({"total_tokens": -1}, "total_tokens must be >= 0"),
        ({"cached_tokens": 200}, r"cached_tokens \(200\) > total_tokens \(100\)"),
        ({"append_tokens": 50}, "cached_tokens \\+ append_tokens"),
        ({"total_tokens": 1 << 30}, "absurd"),
        ({"expected_output_tokens": -5}, "expected_output_tokens"),
        ({"kv_bytes_per_token": 1.5}, "kv_bytes_per_token must be an integer"),
    ],
)
def test_impossible_requests_are_rejected_naming_the_field(kwargs, message):
    fields = {
        "request_id": "r",
        "total_tokens": 100,
        "cached_tokens": 90,
        "append_tokens": 10,
        "expected_output_tokens": 0,
        "kv_bytes_per_token": 0,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        Request(**fields)
