"""Seeded agentic trace generator matching the paper's Table 2 statistics.

A trajectory is one agent's list of turns. Each turn sends a prompt that extends the previous
context (prompt + generated tokens) by freshly appended tokens (tool output, user text), so
all but the appended tokens can be served from the KV cache in storage. When the next turn
would overflow the trace's context cap, the context is compacted (see constants): the new
prompt keeps only the system prompt as a reusable prefix.

Pure: the same (stats, count, seed) always gives the same trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualpath_sim import constants as C

_FIT_ITERATIONS = 12
_FIT_TOLERANCE = 3e-3


@dataclass(frozen=True)
class Trajectory:
    """Per-turn arrays (same length): prompt tokens, tokens of the prompt that extend the
    previous context of this trajectory (reusable if stored), and generated tokens."""

    index: int
    prompt_tokens: tuple[int, ...]
    reused_prefix_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    @property
    def turns(self) -> int:
        return len(self.prompt_tokens)


@dataclass(frozen=True)
class TraceSummary:
    trajectories: int
    turns_total: int
    turns_mean: float
    append_mean: float
    generated_mean: float
    mean_context: float
    max_context_seen: int
    compactions: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def _lognormal_with_mean(
    rng: np.random.Generator, mean: float, sigma: float, size: int
) -> np.ndarray:
    mu = np.log(mean) - sigma * sigma / 2.0
    return rng.lognormal(mu, sigma, size)


def _scale_to_mean(values: np.ndarray, target: float, lo: int, hi: int) -> np.ndarray:
    """Rescale so the sample mean hits `target` (few passes: clipping moves it)."""
    out = np.clip(np.rint(values), lo, hi)
    for _ in range(6):
        mean = float(out.mean())
        if mean <= 0 or abs(mean - target) / target < 1e-3:
            break
        values = values * (target / mean)
        out = np.clip(np.rint(values), lo, hi)
    return out.astype(np.int64)


def _build_turns(
    appends: np.ndarray,
    outputs: np.ndarray,
    task_tokens: int,
    summaries: np.ndarray,
    max_context: int,
    system_tokens: int,
) -> tuple[list[int], list[int], list[int], int]:
    prompts: list[int] = []
    reused: list[int] = []
    outs: list[int] = []
    compactions = 0
    context = 0  # tokens of the previous prompt + its output (0 before the first turn)
    for k in range(len(appends)):
        out = int(outputs[k])
        if k == 0:
            prompt = system_tokens + task_tokens
            prefix = 0
        else:
            append = int(appends[k])
            prompt = context + append
            prefix = context
            if prompt + out > max_context:
                compactions += 1
                prefix = system_tokens
                prompt = prefix + int(summaries[k]) + append
        # Never exceed the cap (a huge tool output is truncated, as agent frameworks do).
        prompt = min(prompt, max_context - out)
        prefix = min(prefix, prompt - 1)
        prompts.append(prompt)
        reused.append(prefix)
        outs.append(out)
        context = prompt + out
    return prompts, reused, outs, compactions


def generate_trace(
    stats: C.TraceStats, count: int = C.TRAJECTORIES_PER_TRACE, seed: int = 0
) -> list[Trajectory]:
    """`count` trajectories whose pooled statistics match `stats` (Table 2 row)."""
    if count <= 0:
        raise ValueError(f"count must be > 0, got {count}")
    rng = np.random.default_rng([seed, stats.max_context])
    turns = _scale_to_mean(
        _lognormal_with_mean(rng, stats.turns, C.TURNS_LOGNORMAL_SIGMA, count),
        stats.turns,
        lo=max(2, int(stats.turns * C.TURNS_CLIP[0])),
        hi=int(stats.turns * C.TURNS_CLIP[1]),
    )
    total = int(turns.sum())
    raw_append = _lognormal_with_mean(rng, stats.append_tokens, C.APPEND_LOGNORMAL_SIGMA, total)
    outputs = _scale_to_mean(
        _lognormal_with_mean(rng, stats.generated_tokens, C.GENERATED_LOGNORMAL_SIGMA, total),
        stats.generated_tokens,
        lo=1,
        hi=8_192,
    )
    tasks = rng.integers(C.INITIAL_TASK_TOKENS[0], C.INITIAL_TASK_TOKENS[1] + 1, count)
    summaries = rng.integers(
        C.COMPACTION_SUMMARY_TOKENS[0], C.COMPACTION_SUMMARY_TOKENS[1] + 1, total
    )
    starts = np.concatenate(([0], np.cumsum(turns)[:-1]))
    # Two fitted knobs, found by a short fixed-point iteration (deterministic):
    # - the first turn and compaction turns add uncached tokens of their own, so the plain
    #   appends shrink until the mean uncached tokens per turn matches the table;
    # - the system prompt (the prefix that survives compaction; agent frameworks carry tool
    #   definitions there) grows until the mean context matches the table.
    scale = 1.0
    system = float(C.SYSTEM_PROMPT_TOKENS)
    trajectories: list[Trajectory] = []
    for _ in range(_FIT_ITERATIONS):
        appends = np.clip(np.rint(raw_append * scale), 1, stats.max_context // 4).astype(np.int64)
        trajectories = []
        uncached = 0
        context = 0
        for i in range(count):
            lo, hi = int(starts[i]), int(starts[i] + turns[i])
            p, r, o, _ = _build_turns(
                appends[lo:hi],
                outputs[lo:hi],
                int(tasks[i]),
                summaries[lo:hi],
                stats.max_context,
                int(system),
            )
            uncached += sum(p) - sum(r)
            context += sum(p)
            trajectories.append(Trajectory(i, tuple(p), tuple(r), tuple(o)))
        append_mean = uncached / total
        context_mean = context / total
        if (
            abs(append_mean - stats.append_tokens) / stats.append_tokens < _FIT_TOLERANCE
            and abs(context_mean - stats.mean_context) / stats.mean_context < _FIT_TOLERANCE
        ):
            break
        scale *= stats.append_tokens / append_mean
        # A larger prefix also triggers compaction earlier, so step a bit past the gap.
        system = max(0.0, system + 1.3 * (stats.mean_context - context_mean))
    return trajectories


def summarize_trace(trajectories: list[Trajectory], max_context: int) -> TraceSummary:
    prompts = [p for t in trajectories for p in t.prompt_tokens]
    reused = [r for t in trajectories for r in t.reused_prefix_tokens]
    outs = [o for t in trajectories for o in t.output_tokens]
    turns = len(prompts)
    compactions = sum(
        1
        for t in trajectories
        for k in range(1, t.turns)
        if t.reused_prefix_tokens[k] != t.prompt_tokens[k - 1] + t.output_tokens[k - 1]
    )
    return TraceSummary(
        trajectories=len(trajectories),
        turns_total=turns,
        turns_mean=turns / len(trajectories),
        append_mean=(sum(prompts) - sum(reused)) / turns,
        generated_mean=sum(outs) / turns,
        mean_context=sum(prompts) / turns,
        max_context_seen=max(p + o for p, o in zip(prompts, outs, strict=True)),
        compactions=compactions,
    )
