"""The trace generator reproduces the paper's Table 2 and is deterministic."""

from __future__ import annotations

import pytest
from dualpath_sim import constants as C
from dualpath_sim.trace import generate_trace, summarize_trace


@pytest.mark.parametrize("name", sorted(C.TRACE_STATS))
def test_trace_matches_table_2(name: str) -> None:
    stats = C.TRACE_STATS[name]
    trajectories = generate_trace(stats, C.TRAJECTORIES_PER_TRACE, seed=3)
    summary = summarize_trace(trajectories, stats.max_context)
    assert summary.trajectories == 500
    for got, want in (
        (summary.turns_mean, stats.turns),
        (summary.append_mean, stats.append_tokens),
        (summary.generated_mean, stats.generated_tokens),
        (summary.mean_context, stats.mean_context),
    ):
        assert got == pytest.approx(want, rel=0.01)
    assert summary.max_context_seen <= stats.max_context
    # Contexts hit the cap and get compacted (Table 2: turns x growth > cap).
    assert summary.compactions > 0


def test_turns_extend_the_previous_context() -> None:
    stats = C.TRACE_STATS["32k"]
    for traj in generate_trace(stats, 20, seed=1):
        assert traj.reused_prefix_tokens[0] == 0
        for k in range(1, traj.turns):
            previous = traj.prompt_tokens[k - 1] + traj.output_tokens[k - 1]
            reused = traj.reused_prefix_tokens[k]
            assert 0 < reused < traj.prompt_tokens[k]
            # Either the whole previous context is reused, or it was compacted.
            assert reused == previous or reused < previous
            assert traj.prompt_tokens[k] + traj.output_tokens[k] <= stats.max_context


def test_trace_is_seeded() -> None:
    stats = C.TRACE_STATS["48k"]
    a = generate_trace(stats, 30, seed=7)
    b = generate_trace(stats, 30, seed=7)
    c = generate_trace(stats, 30, seed=8)
    assert a == b
    assert a != c


def test_bad_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="count"):
        generate_trace(C.TRACE_STATS["64k"], 0)
