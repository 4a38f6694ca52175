"""The demo's workload (pure): agent trajectories, their token ids and KV blocks.

Trajectories come from the simulator's trace generator (paper Table 2 statistics), scaled
down in tokens by `context_scale` so a laptop can move them: appended, generated and kept
(after a context compaction) token counts are multiplied by the scale and the context is
rebuilt turn by turn from them, so the scaled trace keeps the paper's shape (~97% of each
prompt is the previous context, re-read from storage every turn).

Each trajectory plays a window of `turns_per_trajectory` consecutive turns starting at a
seeded turn >= 1. What it had stored before the window (the prefix its first played turn
reuses) is pre-populated; everything after is produced by the run itself (Commit persists
the prompt's new full blocks, decode persists the blocks its output completes).

Token ids are pseudo-random; the played turns draw theirs from a per-phase seed so that
every phase creates new blocks of its own (the same amount of work) instead of finding the
previous phase's blocks already stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from dualpath_agent.blockhash import ChainedBlock, block_chain
from dualpath_common.models import ModelPreset, get_model_preset

TRACE_ROWS = ("32k", "48k", "64k")
VOCAB = 128_000


@dataclass(frozen=True)
class WorkloadConfig:
    trace: str = "32k"
    context_scale: float = 0.25
    trajectories: int = 24
    turns_per_trajectory: int = 5
    block_tokens: int = 64
    model: str = "tiny-test"
    seed: int = 7

    def validate(self) -> None:
        if self.trace not in TRACE_ROWS:
            raise ValueError(f"trace must be one of {', '.join(TRACE_ROWS)}, got {self.trace!r}")
        if not 0.01 <= self.context_scale <= 1.0:
            raise ValueError(f"context_scale must be in [0.01, 1], got {self.context_scale}")
        if self.trajectories < 1:
            raise ValueError(f"trajectories (--agents) must be >= 1, got {self.trajectories}")
        if self.turns_per_trajectory < 1:
            raise ValueError(
                f"turns_per_trajectory (--turns) must be >= 1, got {self.turns_per_trajectory}"
            )
        if not 1 <= self.block_tokens <= 4096:
            raise ValueError(f"block_tokens must be in 1..4096, got {self.block_tokens}")
        get_model_preset(self.model)

    @property
    def preset(self) -> ModelPreset:
        return get_model_preset(self.model)


@dataclass(frozen=True)
class Turn:
    """One played turn: its prompt length, the tokens of it that extend the trajectory's
    previous context (the rest is new: tool output, user text) and its output length."""

    index: int
    prompt_tokens: int
    reused_tokens: int
    output_tokens: int

    @property
    def appended_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens


@dataclass(frozen=True)
class TrajectoryPlan:
    index: int
    # Tokens of context stored before the first played turn (its reused prefix).
    stored_prefix_tokens: int
    turns: tuple[Turn, ...]

    @property
    def session_id(self) -> str:
        return f"agent-{self.index:03d}"


@dataclass(frozen=True)
class Workload:
    config: WorkloadConfig
    trajectories: tuple[TrajectoryPlan, ...]

    @property
    def turns_total(self) -> int:
        return sum(len(t.turns) for t in self.trajectories)

    def mean_prompt_tokens(self) -> float:
        prompts = [turn.prompt_tokens for t in self.trajectories for turn in t.turns]
        return sum(prompts) / len(prompts)

    def max_context_tokens(self, trajectory: TrajectoryPlan) -> int:
        return max(t.prompt_tokens + t.output_tokens for t in trajectory.turns)

    def summary(self) -> dict[str, float]:
        turns = [turn for t in self.trajectories for turn in t.turns]
        n = len(turns)
        return {
            "trajectories": len(self.trajectories),
            "turns": n,
            "mean_prompt_tokens": sum(t.prompt_tokens for t in turns) / n,
            "mean_appended_tokens": sum(t.appended_tokens for t in turns) / n,
            "mean_output_tokens": sum(t.output_tokens for t in turns) / n,
            "reuse_ratio": sum(t.reused_tokens for t in turns)
            / sum(t.prompt_tokens for t in turns),
            "max_context_tokens": max(t.prompt_tokens + t.output_tokens for t in turns),
        }


def _scaled_turns(
    prompts: Sequence[int], reused: Sequence[int], outputs: Sequence[int], scale: float
) -> list[Turn]:
    """Rebuild a trajectory's turns with every token count scaled (contexts stay chained)."""
    turns: list[Turn] = []
    context = 0
    for k, (p, r, o) in enumerate(zip(prompts, reused, outputs, strict=True)):
        appended = max(1, round((p - r) * scale))
        out = max(1, round(o * scale))
        compacted = k > 0 and r != prompts[k - 1] + outputs[k - 1]
        kept = round(r * scale) if compacted else context
        turns.append(Turn(k, kept + appended, kept, out))
        context = kept + appended + out
    return turns


def build_workload(config: WorkloadConfig) -> Workload:
    """Trajectories of the scaled trace, each with its played window (deterministic)."""
    config.validate()
    from dualpath_sim.constants import TRACE_STATS
    from dualpath_sim.trace import generate_trace

    raw = generate_trace(TRACE_STATS[config.trace], config.trajectories, config.seed)
    rng = np.random.default_rng([config.seed, 1])
    plans: list[TrajectoryPlan] = []
    for t in raw:
        turns = _scaled_turns(
            t.prompt_tokens, t.reused_prefix_tokens, t.output_tokens, config.context_scale
        )
        window = min(config.turns_per_trajectory, len(turns) - 1)
        start = int(rng.integers(1, len(turns) - window + 1))
        played = tuple(turns[start : start + window])
        plans.append(TrajectoryPlan(t.index, played[0].reused_tokens, played))
    return Workload(config, tuple(plans))


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def new_token_ids(
    seed: int, trajectory: int, tag: str, turn: int, count: int, low: int = 0, high: int = VOCAB
) -> np.ndarray:
    """`count` pseudo-random token ids in [low, high), a pure function of the arguments."""
    rng = np.random.default_rng(_seed(seed, trajectory, tag, turn))
    return rng.integers(low, high, count, dtype=np.uint32)


@dataclass
class Context:
    """A trajectory's token ids as one phase plays it."""

    plan: TrajectoryPlan
    seed: int
    phase_tag: str
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))

    @classmethod
    def initial(cls, plan: TrajectoryPlan, seed: int, phase_tag: str) -> Context:
        base = new_token_ids(seed, plan.index, "stored", 0, plan.stored_prefix_tokens)
        return cls(plan, seed, phase_tag, base)

    def prompt(self, turn: Turn) -> np.ndarray:
        """The turn's prompt: the reused part of the context + freshly appended tokens."""
        if turn.reused_tokens > len(self.ids):
            raise ValueError(
                f"turn {turn.index} reuses {turn.reused_tokens} tokens, context has {len(self.ids)}"
            )
        appended = new_token_ids(
            self.seed, self.plan.index, self.phase_tag + "/in", turn.index, turn.appended_tokens
        )
        return np.concatenate([self.ids[: turn.reused_tokens], appended])

    def finish(self, prompt: np.ndarray, turn: Turn) -> np.ndarray:
        """After decode: the context becomes prompt + generated tokens."""
        output = new_token_ids(
            self.seed, self.plan.index, self.phase_tag + "/out", turn.index, turn.output_tokens
        )
        self.ids = np.concatenate([prompt, output])
        return self.ids


def stored_prefix_blocks(plan: TrajectoryPlan, seed: int, block_tokens: int) -> list[ChainedBlock]:
    """The full blocks pre-populated for a trajectory (same for every phase)."""
    ids = new_token_ids(seed, plan.index, "stored", 0, plan.stored_prefix_tokens)
    return block_chain(ids, block_tokens)


@dataclass(frozen=True)
class TurnBlocks:
    """How one turn's prompt maps onto stored blocks."""

    chain: list[ChainedBlock]  # full blocks of the prompt
    cached_blocks: int  # leading blocks found in storage (read, not computed)
    block_tokens: int
    prompt_tokens: int

    @property
    def cached_tokens(self) -> int:
        return self.cached_blocks * self.block_tokens

    @property
    def missed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def cached(self) -> list[ChainedBlock]:
        return self.chain[: self.cached_blocks]

    @property
    def new_blocks(self) -> list[ChainedBlock]:
        """Full blocks the prefill computes (persisted by Commit)."""
        return self.chain[self.cached_blocks :]


def plan_turn_blocks(prompt: np.ndarray, block_tokens: int, stored_prefix: int) -> TurnBlocks:
    """`stored_prefix`: leading blocks present in storage. At least one token is always
    computed (an engine needs one to produce the first output token)."""
    chain = block_chain(prompt, block_tokens)
    cached = min(stored_prefix, len(chain), (len(prompt) - 1) // block_tokens)
    return TurnBlocks(chain, cached, block_tokens, len(prompt))


def decode_blocks(context: np.ndarray, prompt_tokens: int, block_tokens: int) -> list[ChainedBlock]:
    """Full blocks completed during decode (they hold generated tokens): persisted as the
    decode engine fills them."""
    chain = block_chain(context, block_tokens)
    return chain[prompt_tokens // block_tokens :]
