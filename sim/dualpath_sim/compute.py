"""Compute time of prefill and decode from a model's ComputeProfile (constants.py)."""

from __future__ import annotations

import math

from dualpath_sim.constants import ComputeProfile


def prefill_chunk_s(profile: ComputeProfile, new_tokens: int, context_before: int) -> float:
    """Compute time of `new_tokens` prompt tokens appended to `context_before` tokens."""
    return new_tokens * (
        profile.prefill_per_token_s
        + profile.prefill_per_token_ctx_s * (context_before + new_tokens / 2.0)
    )


def tokens_fitting(profile: ComputeProfile, budget_s: float, context_before: int) -> int:
    """Largest n with prefill_chunk_s(n, context_before) <= budget_s (at least 1)."""
    a = profile.prefill_per_token_s + profile.prefill_per_token_ctx_s * context_before
    b = profile.prefill_per_token_ctx_s / 2.0
    if budget_s <= 0:
        return 1
    n = budget_s / a if b <= 0 else (-a + math.sqrt(a * a + 4.0 * b * budget_s)) / (2.0 * b)
    return max(1, int(n))


def decode_step_s(profile: ComputeProfile, batch: int, context_tokens: float) -> float:
    """One decode step for `batch` requests holding `context_tokens` tokens in total."""
    return (
        profile.decode_step_base_s
        + profile.decode_step_per_seq_s * batch
        + profile.decode_step_per_ctx_token_s * context_tokens
    )


def prefill_tokens_per_s(profile: ComputeProfile, prompt_tokens: int, new_tokens: int) -> float:
    """Prompt tokens (cached + new) one prefill engine gets through per second on requests of
    this shape: the rate the paper's beta ("tokens one GPU processes in 5 s") is about."""
    seconds = profile.prefill_batch_overhead_s / 4 + prefill_chunk_s(
        profile, new_tokens, prompt_tokens - new_tokens
    )
    return prompt_tokens / seconds
