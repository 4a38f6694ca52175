"""The local demo's pure parts: its scaled workload, how turns map onto stored blocks, and
how a phase's numbers are aggregated."""

from __future__ import annotations

import numpy as np
import pytest
from dualpath_local.config import DemoConfig, buffer_sizes
from dualpath_local.driver import PhaseRun, TurnRecord
from dualpath_local.results import (
    NodeCounters,
    add_speedups,
    node_results,
    rate_timeline,
    summarize_phase,
)
from dualpath_local.workload import (
    Context,
    WorkloadConfig,
    _scaled_turns,
    build_workload,
    decode_blocks,
    plan_turn_blocks,
    stored_prefix_blocks,
)


def test_scaled_turns_keep_contexts_chained_and_compactions() -> None:
    # Turn 1 extends turn 0's context; turn 2 is a compaction that keeps 1,000 tokens.
    turns = _scaled_turns([4000, 5000, 1600], [0, 4100, 1000], [100, 200, 50], 0.5)
    assert [t.reused_tokens for t in turns] == [0, 2050, 500]
    assert turns[1].reused_tokens == turns[0].prompt_tokens + turns[0].output_tokens
    assert [t.appended_tokens for t in turns] == [2000, 450, 300]
    assert [t.output_tokens for t in turns] == [50, 100, 25]


def test_workload_is_deterministic_and_shaped_like_the_trace() -> None:
    config = WorkloadConfig(trajectories=16, turns_per_trajectory=4, context_scale=0.25)
    a, b = build_workload(config), build_workload(config)
    assert a == b
    s = a.summary()
    assert s["turns"] == 64
    # 32K trace scaled to 1/4: mean context ~4.3K tokens, almost all of it reused.
    assert 2_500 < s["mean_prompt_tokens"] < 6_500
    assert s["reuse_ratio"] > 0.9
    assert s["max_context_tokens"] <= 32 * 1024 * 0.25 + 64
    for plan in a.trajectories:
        assert plan.stored_prefix_tokens == plan.turns[0].reused_tokens > 0
        assert [t.index for t in plan.turns] == list(
            range(plan.turns[0].index, plan.turns[0].index + 4)
        )


def test_bad_workload_fields_are_named() -> None:
    with pytest.raises(ValueError, match="trace"):
        WorkloadConfig(trace="16k").validate()
    with pytest.raises(ValueError, match="context_scale"):
        WorkloadConfig(context_scale=2).validate()
    with pytest.raises(ValueError, match="unknown model preset"):
        WorkloadConfig(model="gpt-9").validate()
    with pytest.raises(ValueError, match="unknown policy"):
        DemoConfig(policies=("fastest",)).validate()


def test_turns_read_the_stored_prefix_and_phases_write_their_own_blocks() -> None:
    config = WorkloadConfig(trajectories=2, turns_per_trajectory=3)
    plan = build_workload(config).trajectories[0]
    bt = config.block_tokens
    stored = stored_prefix_blocks(plan, config.seed, bt)
    first = plan.turns[0]
    contexts = {tag: Context.initial(plan, config.seed, tag) for tag in ("p0", "p1")}
    prompts = {tag: c.prompt(first) for tag, c in contexts.items()}
    blocks = {tag: plan_turn_blocks(p, bt, len(stored)) for tag, p in prompts.items()}
    for tb in blocks.values():
        # The first turn reads exactly the pre-populated full blocks, computes the rest.
        assert [b.block_hash for b in tb.cached] == [b.block_hash for b in stored]
        assert tb.cached_tokens + tb.missed_tokens == first.prompt_tokens
        assert tb.missed_tokens >= first.appended_tokens
    # Each phase appends its own tokens: new blocks differ, so no phase finds another's.
    new0 = {b.block_hash for b in blocks["p0"].new_blocks}
    new1 = {b.block_hash for b in blocks["p1"].new_blocks}
    assert new0 and not new0 & new1
    # After decode the context is prompt + output; decode completes the straddling block.
    full = contexts["p0"].finish(prompts["p0"], first)
    assert len(full) == first.prompt_tokens + first.output_tokens
    completed = decode_blocks(full, first.prompt_tokens, bt)
    assert all(b.first_token >= first.prompt_tokens // bt * bt for b in completed)
    # Next turn: every full block of the previous context is stored (Commit + decode) and
    # its prompt starts with that context, so all of them are read, the rest computed.
    second = plan.turns[1]
    prompt2 = contexts["p0"].prompt(second)
    assert np.array_equal(prompt2[: len(full)], full)
    tb2 = plan_turn_blocks(prompt2, bt, len(full) // bt)
    assert tb2.cached_tokens == len(full) // bt * bt
    assert tb2.missed_tokens == len(full) % bt + second.appended_tokens


def test_at_least_one_token_is_computed() -> None:
    prompt = np.arange(128, dtype=np.uint32)
    tb = plan_turn_blocks(prompt, 64, stored_prefix=2)
    assert tb.cached_blocks == 1 and tb.missed_tokens == 64


def test_buffer_sizes_hold_every_trajectory_at_once() -> None:
    w = build_workload(WorkloadConfig(trajectories=4, turns_per_trajectory=2))
    host, device = buffer_sizes(w)
    kv = w.config.preset.kv_bytes_per_token
    need = sum(w.max_context_tokens(p) * kv for p in w.trajectories)
    assert device >= need and device % (1 << 20) == 0
    assert host >= 64 << 20


def _record(path: str, loaded: int, peer: int, turn_s: float) -> TurnRecord:
    return TurnRecord(
        trajectory=0,
        turn=1,
        request_id="r",
        path=path,
        de_read_fraction=0.0,
        prefill_node="prefill-0",
        decode_node="decode-0",
        prompt_tokens=100,
        cached_tokens=64,
        missed_tokens=36,
        blocks_expected=1,
        bytes_loaded=loaded,
        bytes_from_peer=peer,
        blocks_verified=1,
        turn_s=turn_s,
    )


def test_phase_summary_and_speedup() -> None:
    before = {"a": NodeCounters(100, 1, 0), "b": NodeCounters(0, 0, 0)}
    after = {"a": NodeCounters(1_100, 5, 0), "b": NodeCounters(500, 2, 1)}
    nodes = node_results(before, after, {"a": "prefill", "b": "decode"}, {"a": 100, "b": 50}, 10)
    assert [(n.bytes_read, n.read_bytes_per_s, n.utilisation) for n in nodes] == [
        (1_000, 100.0, 1.0),
        (500, 50.0, 1.0),
    ]
    base = PhaseRun("prefill-only", started=0.0, finished=10.0)
    base.records = [_record("pe_read", 10, 0, 1.0)] * 5
    split = PhaseRun("dualpath-split", started=0.0, finished=4.0)
    split.records = [_record("split", 10, 6, 1.0)] * 5
    results = [summarize_phase(base, 5, nodes, []), summarize_phase(split, 5, nodes, [])]
    add_speedups(results)
    assert [r.speedup for r in results] == [1.0, 2.5]
    assert results[1].de_read_share == pytest.approx(0.6)
    assert results[1].paths == {"split": 5}
    # A checksum failure on a node makes the phase not ok.
    assert results[0].checksum_failures == 1 and not results[0].ok


def test_rate_timeline_averages_cumulative_samples() -> None:
    samples = [(float(t), 100 * t) for t in range(0, 11)]
    points = rate_timeline(samples, start=0.0, step_s=1.0, window_s=2.0)
    assert points and all(rate == pytest.approx(100.0) for _, rate in points)
    assert [t for t, _ in points] == sorted(t for t, _ in points)
