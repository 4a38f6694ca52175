"""Invariants of the simulator: bytes conserved, no engine over capacity, determinism,
Oracle as an upper bound, and the hardware/compute pieces behaving as documented."""

from __future__ import annotations

import dataclasses

import pytest
from dualpath_controller.policy import Role
from dualpath_sim import constants as C
from dualpath_sim.compute import decode_step_s, prefill_chunk_s, tokens_fitting
from dualpath_sim.config import ORACLE, SimConfig, Workload
from dualpath_sim.core import Simulator, simulate
from dualpath_sim.hardware import HardwareSpec, Link
from dualpath_sim.metrics import RunResult
from dualpath_sim.policies import build_policy, derived_params, sim_policy_names
from dualpath_sim.trace import Trajectory, generate_trace

MODEL = "deepseek-v3.2-660b"
BPT = 61 * 656


def _hardware(p: int = 1, d: int = 2, gpus: int = 2) -> HardwareSpec:
    share = gpus / C.GPUS_PER_NODE
    return HardwareSpec(
        p,
        d,
        gpus_per_node=gpus,
        snic_read_bytes_per_s=C.SNIC_READ_BYTES_PER_S * share,
        snic_write_bytes_per_s=C.SNIC_WRITE_BYTES_PER_S * share,
    )


def _config(policy: str, agents: int = 40, window: int = 12, **workload: object) -> SimConfig:
    wl = Workload(trace="64k", trajectories=50, agents=agents, turn_window=window, **workload)  # type: ignore[arg-type]
    return SimConfig(MODEL, _hardware(), wl, policy=policy, bin_s=5.0)


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    return generate_trace(C.TRACE_STATS["64k"], 50, seed=0)


def _expected_bytes(trajs: list[Trajectory], agents: int, window: int) -> tuple[int, int, int]:
    """Reads, writes and turns of agents starting at turn 0, recomputed from the trace."""
    reads = writes = turns = 0
    for aid in range(agents):
        traj = trajs[aid % len(trajs)]
        stored = 0
        for k in range(min(window, traj.turns)):
            reusable = min(traj.reused_prefix_tokens[k], stored)
            cached = reusable // C.BLOCK_TOKENS * C.BLOCK_TOKENS
            stored = (traj.prompt_tokens[k] + traj.output_tokens[k]) // C.BLOCK_TOKENS
            stored *= C.BLOCK_TOKENS
            reads += cached * BPT
            writes += (stored - cached) * BPT
            turns += 1
    return reads, writes, turns


@pytest.mark.parametrize("policy", sim_policy_names())
def test_bytes_are_conserved(policy: str, trajectories: list[Trajectory]) -> None:
    result = simulate(_config(policy), trajectories)
    reads, writes, turns = _expected_bytes(trajectories, 40, 12)
    inv = result.invariants
    assert result.turns_completed == turns
    assert result.agents_completed == 40
    assert inv.read_bytes_requests == reads
    assert inv.read_bytes_links == reads  # every cached byte crossed exactly one SNIC
    assert sum(n.read_bytes for n in result.nodes) == reads
    assert inv.write_bytes_requests == writes == inv.write_bytes_links
    if policy == "prefill-only":
        assert all(n.read_bytes == 0 for n in result.nodes if n.role == "decode")
    if policy in ("paper", "round-robin", "dualpath-split"):
        assert any(n.read_bytes > 0 for n in result.nodes if n.role == "decode")


def _hbm_pressure(policy: str) -> SimConfig:
    # 2 decode engines (1.8M tokens of KV) against ~100 agents of ~33K-token contexts.
    wl = Workload(trace="64k", trajectories=50, agents=100, turn_window=6, random_start=True)
    return SimConfig(MODEL, _hardware(1, 1, 2), wl, policy=policy, bin_s=5.0)


@pytest.mark.parametrize("policy", ["paper", "round-robin", "dualpath-split"])
def test_no_engine_over_capacity_and_view_drains(policy: str) -> None:
    sim = Simulator(_hbm_pressure(policy))
    result = sim.run()
    inv = result.invariants
    assert 0.9 < inv.max_de_hbm_fraction <= 1.0  # the HBM limit was reached, never passed
    assert inv.no_capacity > 0  # and requests had to wait for it
    assert inv.max_prefill_batch_s <= C.PREFILL_QUOTA_S + 1e-9
    # Everything booked in the policy core's view was given back.
    view = sim.view
    assert view.bookings == {}
    for engine in view.engines.values():
        assert engine.unfinished_requests == 0
        assert engine.unfinished_tokens == 0
        if engine.role is Role.DECODE:
            assert engine.free_hbm_tokens == engine.hbm_capacity_tokens
    for node in view.nodes.values():
        assert node.read_queue_length == node.read_queue_bytes == 0
    view.check_invariants()


def _comparable(result: RunResult) -> dict[str, object]:
    out = result.as_dict()
    out.pop("wall_s")
    return out


def test_identical_seeds_give_identical_results() -> None:
    cfg = _config("dualpath-split", think_time_s=2.0)
    first = simulate(cfg)
    second = simulate(cfg)
    assert _comparable(first) == _comparable(second)
    other = simulate(dataclasses.replace(cfg, workload=dataclasses.replace(cfg.workload, seed=1)))
    assert _comparable(other) != _comparable(first)


def test_oracle_bounds_every_policy() -> None:
    results = {p: simulate(_hbm_pressure(p)) for p in sim_policy_names()}
    oracle = results.pop(ORACLE)
    assert oracle.invariants.read_bytes_links > 0  # same bytes, just free
    for policy, result in results.items():
        assert oracle.turns_per_s >= result.turns_per_s, policy
        assert oracle.ttft.mean <= result.ttft.mean, policy


def test_single_request_latency_follows_the_compute_model() -> None:
    wl = Workload(trace="64k", trajectories=1, agents=1, turn_window=3)
    cfg = SimConfig(MODEL, _hardware(), wl, policy=ORACLE)
    sim = Simulator(cfg)
    result = sim.run()
    traj = sim.trajectories[0]
    profile = cfg.profile
    # Alone on a decode engine, every step takes the model's step time for one sequence.
    expected = [decode_step_s(profile, 1, traj.prompt_tokens[k]) for k in range(3)]
    assert result.tpot.count == 3
    assert min(expected) - 1e-12 <= result.tpot.mean <= max(expected) + 1e-12
    # With free I/O the first token costs exactly the prefill compute (plus batch overhead).
    first = prefill_chunk_s(profile, traj.prompt_tokens[0], 0) + profile.prefill_batch_overhead_s
    assert result.ttft.p99 >= min(first, C.PREFILL_QUOTA_S) - 1e-9


def test_link_is_a_fifo_bandwidth_server() -> None:
    link = Link("x", 100.0, bin_s=1.0)
    assert link.reserve(0.0, 100) == pytest.approx(1.0)
    assert link.reserve(0.5, 50) == pytest.approx(1.5)  # waits for the first transfer
    assert link.reserve(3.0, 10) == pytest.approx(3.1)  # idle link starts at once
    assert link.reserve(4.0, 0) == 4.0
    assert link.bytes_total == 160
    assert link.busy_s == pytest.approx(1.6)
    assert sum(link.bins) == pytest.approx(160)
    assert link.bins[0] == pytest.approx(100)


def test_prefill_chunking_inverts_the_cost_model() -> None:
    profile = C.COMPUTE_PROFILES[MODEL]
    for context in (0, 10_000, 60_000):
        n = tokens_fitting(profile, 0.2, context)
        assert prefill_chunk_s(profile, n, context) <= 0.2
        assert prefill_chunk_s(profile, n + 2, context) > 0.2
    # Attention makes the same tokens dearer on a longer context.
    assert prefill_chunk_s(profile, 500, 60_000) > prefill_chunk_s(profile, 500, 1_000)


def test_policies_come_from_the_policy_core() -> None:
    cfg = _config("paper")
    policy, io_free = build_policy(cfg)
    assert type(policy).__module__ == "dualpath_controller.policy.paper"
    assert not io_free
    params = derived_params(cfg)
    assert policy.params["alpha"] == params["alpha"]
    assert policy.params["beta"] == params["beta"]
    oracle, io_free = build_policy(cfg.with_policy(ORACLE))
    assert io_free and oracle.name == "paper"
    with pytest.raises(ValueError, match="'z'"):
        build_policy(cfg.with_policy("paper", z=99))
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy(cfg.with_policy("fastest"))


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="prefill_nodes"):
        HardwareSpec(0, 1)
    with pytest.raises(ValueError, match=r"workload\.trace"):
        Workload(trace="1m")
    with pytest.raises(ValueError, match="arrival_rate"):
        Workload(mode="online", arrival_rate=0)
    with pytest.raises(ValueError, match="unknown model preset"):
        SimConfig("gpt-9", _hardware(), Workload())
