"""Token-equality checks against a reference engine (one that recomputes every prompt).

An engine whose KV cache came through a connector must answer a prompt as an engine that
computed it: the same greedy tokens and, within rounding, the same logprobs. Over the
OpenAI API on vLLM 0.32.0, `"return_token_ids": true` gives the generated ids (and the
prompt's) in each choice, and `"logprobs": 0` the chosen token's logprob at every step.
Logprobs need the server's tokenizer (the tiny model ships one).

Needs only httpx: runs in the control plane's venv as well as the engines'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx


class Completion(NamedTuple):
    token_ids: list[int]
    logprobs: list[float]


def greedy_completion(
    base_url: str,
    prompt_token_ids: Sequence[int],
    max_tokens: int,
    *,
    extra_body: Mapping[str, Any] | None = None,
    timeout_s: float = 120.0,
) -> Completion:
    """Greedy decoding of a token-id prompt: exactly `max_tokens` tokens (EOS ignored, so
    runs are the same length) with each chosen token's logprob."""
    body: dict[str, Any] = {
        "prompt": list(prompt_token_ids),
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": 0,
        "return_token_ids": True,
        **(extra_body or {}),
    }
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"{base_url}/v1/completions -> {response.status_code}: {response.text}")
    choice = response.json()["choices"][0]
    token_ids = [int(t) for t in choice["token_ids"]]
    logprobs = [float(lp) for lp in choice["logprobs"]["token_logprobs"]]
    if len(token_ids) != len(logprobs):
        raise RuntimeError(f"{len(token_ids)} token ids but {len(logprobs)} logprobs: {choice}")
    return Completion(token_ids, logprobs)


@dataclass(frozen=True)
class RunDiff:
    """How two completions of one prompt differ."""

    length_a: int
    length_b: int
    # First position whose tokens differ (or where one run ends first); None when equal.
    first_token_mismatch: int | None
    # Largest |logprob_a - logprob_b| over the positions before the first token mismatch
    # (after it the contexts differ and logprobs are not comparable).
    max_logprob_diff: float
    logprob_tol: float

    @property
    def tokens_equal(self) -> bool:
        return self.first_token_mismatch is None

    @property
    def logprobs_close(self) -> bool:
        return self.max_logprob_diff <= self.logprob_tol

    @property
    def same(self) -> bool:
        return self.tokens_equal and self.logprobs_close

    def __str__(self) -> str:
        tokens = (
            "tokens equal"
            if self.tokens_equal
            else f"tokens differ from position {self.first_token_mismatch}"
        )
        return (
            f"{tokens} (lengths {self.length_a}/{self.length_b}); max logprob diff "
            f"{self.max_logprob_diff:.4f} (tolerance {self.logprob_tol})"
        )


def compare_runs(a: Completion, b: Completion, logprob_tol: float = 0.05) -> RunDiff:
    common = min(len(a.token_ids), len(b.token_ids))
    mismatch = next((i for i in range(common) if a.token_ids[i] != b.token_ids[i]), None)
    if mismatch is None and len(a.token_ids) != len(b.token_ids):
        mismatch = common
    # The logprob at the mismatch itself still shares the context: it is compared too.
    compared = common if mismatch is None else min(mismatch + 1, common)
    diffs = [abs(a.logprobs[i] - b.logprobs[i]) for i in range(compared)]
    worst = max(diffs, default=0.0)
    if any(math.isnan(d) for d in diffs):
        worst = math.inf
    return RunDiff(len(a.token_ids), len(b.token_ids), mismatch, worst, logprob_tol)
