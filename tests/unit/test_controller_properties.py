"""Property tests: whatever the cluster and the request stream, no policy hands work to a
drained or overloaded engine, fractions stay in [0, 1], refusals are real, and decisions
are deterministic."""

from __future__ import annotations

from dataclasses import dataclass

from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    NoCapacity,
    ReadPath,
    Request,
    Role,
    get_policy,
    policy_names,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Spec:
    prefill: list[tuple[int, int, bool]]  # (node, tokens, drained)
    decode: list[tuple[int, int, int, int, bool]]  # (node, tokens, seq, free_hbm, drained)
    queues: list[tuple[int, int, float]]  # per node: (tokens, bytes, bandwidth)
    requests: list[tuple[int, float, int, int]]  # (total, cached share, output, kv bytes/token)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    prefill = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 3_000), st.booleans()),
            min_size=1,
            max_size=6,
        )
    )
    decode = draw(
        st.lists(
            st.tuples(
                st.integers(2, 5),
                st.integers(0, 3_000),
                st.integers(0, 5),
                st.integers(0, 2_000),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        )
    )
    queues = draw(
        st.lists(
            st.tuples(
                st.integers(0, 3_000),
                st.integers(0, 10**9),
                st.sampled_from([0.0, 1e9, 5e10]),
            ),
            min_size=6,
            max_size=6,
        )
    )
    requests = draw(
        st.lists(
            st.tuples(
                st.integers(1, 800),
                st.floats(0, 1),
                st.integers(0, 200),
                st.sampled_from([0, 1, 1_000, 40_016]),
            ),
            min_size=1,
            max_size=25,
        )
    )
    return Spec(prefill, decode, queues, requests)


def build(spec: Spec) -> ClusterView:
    view = ClusterView()
    for i, (node, tokens, drained) in enumerate(spec.prefill):
        view.add_engine(
            EngineState(
                f"p{i}", Role.PREFILL, f"n{node}", unfinished_tokens=tokens, drained=drained
            )
        )
    for i, (node, tokens, seq, free, drained) in enumerate(spec.decode):
        view.add_engine(
            EngineState(
                f"d{i}",
                Role.DECODE,
                f"n{node}",
                unfinished_tokens=tokens,
                unfinished_requests=seq,
                hbm_capacity_tokens=2_000,
                free_hbm_tokens=free,
                drained=drained,
            )
        )
    for node, (tokens, nbytes, bandwidth) in enumerate(spec.queues):
        view.update_node_load(
            f"n{node}",
            read_queue_tokens=tokens,
            read_queue_bytes=nbytes,
            snic_read_bytes_per_s=bandwidth,
        )
    return view


def requests_of(spec: Spec) -> list[Request]:
    out = []
    for i, (total, share, output, kv) in enumerate(spec.requests):
        cached = int(total * share)
        out.append(Request(f"r{i}", total, cached, total - cached, output, kv))
    return out


BETA = 2_000
POLICY_PARAMS = {
    "paper": {"alpha": 1_500, "beta": BETA},
    "prefill-only": {"alpha": 1_500, "beta": BETA},
    "round-robin": {"beta": BETA},
    "dualpath-split": {"alpha": 1_500, "beta": BETA},
}


def check_assignment_against(view: ClusterView, a, request: Request) -> None:
    pe = view.engines[a.prefill_engine_id]
    de = view.engines[a.decode_engine_id]
    assert pe.role is Role.PREFILL and de.role is Role.DECODE
    assert not pe.drained, "work given to a drained prefill engine"
    assert not de.drained, "work given to a drained decode engine"
    assert pe.unfinished_tokens <= BETA, "work given to an overloaded prefill engine"
    assert de.free_hbm_tokens >= request.hbm_tokens, "decode engine without HBM for it"
    assert 0.0 <= a.de_read_fraction <= 1.0
    expected = {ReadPath.PE_READ: (0.0, 0.0), ReadPath.DE_READ: (1.0, 1.0)}
    if a.read_path is ReadPath.SPLIT:
        assert 0.0 < a.de_read_fraction < 1.0
    else:
        low, high = expected[a.read_path]
        assert low <= a.de_read_fraction <= high


def has_capacity(view: ClusterView, request: Request) -> bool:
    pe_ok = any(
        not e.drained and e.unfinished_tokens <= BETA
        for e in view.engines.values()
        if e.role is Role.PREFILL
    )
    de_ok = any(
        not e.drained and e.free_hbm_tokens >= request.hbm_tokens
        for e in view.engines.values()
        if e.role is Role.DECODE
    )
    return pe_ok and de_ok


def run_stream(spec: Spec, name: str) -> tuple[ClusterView, list]:
    view = build(spec)
    policy = get_policy(name, **POLICY_PARAMS[name])
    decisions = []
    for request in requests_of(spec):
        try:
            a = policy.schedule(view, request)
        except NoCapacity:
            assert not has_capacity(view, request), "refused although an engine had room"
            decisions.append(None)
            continue
        check_assignment_against(view, a, request)
        view.apply(a, request)
        decisions.append(a)
    view.check_invariants()
    return view, decisions


@SETTINGS
@given(spec=specs(), name=st.sampled_from(policy_names()))
def test_no_policy_assigns_to_drained_or_overloaded_engines(spec: Spec, name: str) -> None:
    run_stream(spec, name)


@SETTINGS
@given(spec=specs(), name=st.sampled_from(policy_names()))
def test_decisions_are_deterministic(spec: Spec, name: str) -> None:
    _, first = run_stream(spec, name)
    _, second = run_stream(spec, name)
    assert first == second


@SETTINGS
@given(spec=specs(), name=st.sampled_from(policy_names()))
def test_releasing_everything_restores_the_cluster(spec: Spec, name: str) -> None:
    before = build(spec)
    view, _ = run_stream(spec, name)
    for request_id in list(view.bookings):
        view.release(request_id)
    for engine_id, engine in before.engines.items():
        after = view.engines[engine_id]
        assert after.unfinished_tokens == engine.unfinished_tokens
        assert after.unfinished_requests == engine.unfinished_requests
        assert after.free_hbm_tokens == engine.free_hbm_tokens
    for node_id, node in before.nodes.items():
        assert view.nodes[node_id].read_queue_tokens == node.read_queue_tokens
        assert view.nodes[node_id].read_queue_bytes == node.read_queue_bytes
    view.check_invariants()


@SETTINGS
@given(spec=specs(), name=st.sampled_from(policy_names()))
def test_batches_respect_the_same_limits(spec: Spec, name: str) -> None:
    view = build(spec)
    policy = get_policy(name, **POLICY_PARAMS[name])
    requests = requests_of(spec)
    result = policy.schedule_batch(view, requests)
    assert [a.request_id for a in result.assignments] + [
        r.request_id for r in result.unscheduled
    ] == [r.request_id for r in requests], "a request was lost or reordered"
    if result.unscheduled:
        assert result.blocked_reason
        assert not has_capacity(view, result.unscheduled[0]), "blocked although there was room"
    # Replay the decisions on a fresh copy: each was legal at the moment it was taken.
    replay = build(spec)
    by_id = {r.request_id: r for r in requests}
    for a in result.assignments:
        check_assignment_against(replay, a, by_id[a.request_id])
        replay.apply(a, by_id[a.request_id])
    view.check_invariants()
