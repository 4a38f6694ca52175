"""Fuzzing a real `dualpath router` process with bad HTTP bodies, in front of a real traffic
controller and two recording engine doubles (tests/support/recording_engine.py); its
agents are loopback ports nothing listens on (a failed prefix lookup counts as no cache).

Bodies: random bytes, JSON that is not an object, objects whose model / messages / prompt /
max_tokens / stream / sampling fields have the wrong types or absurd values, prompts of bad
token ids (negative, over 2^32 - 1, floats, booleans, strings, nested lists), deep nesting,
and a 20 MB body. Property: each answer comes back within its deadline as a 2xx (valid
requests) or a 4xx whose body is the router's JSON error naming the problem, never a 5xx,
and the router stays up and healthy. Cases run are tallied in the terminal summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from dualpath_common.net import free_port
from dualpath_controller.process import ControllerProcess
from dualpath_router.process import RouterProcess
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzz
from tests.support.recording_engine import RecordingEngine
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(180)

TARGET = "router"
PATHS = ("/v1/completions", "/v1/chat/completions")
TIMEOUT_S = 10.0
MAX_PROMPT_TOKENS = 4096


@dataclass
class RouterStack:
    router: RouterProcess
    controller: ControllerProcess
    http: httpx.Client

    def alive(self) -> None:
        for name, proc in (("router", self.router.proc), ("controller", self.controller.proc)):
            assert proc is not None and proc.poll() is None, (
                f"{name} exited:\n{self.router.log_text()[-3000:]}"
            )


@pytest.fixture(scope="module")
def stack() -> Iterator[RouterStack]:
    agents = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    with (
        RecordingEngine("prefill-0") as prefill,
        RecordingEngine("decode-0") as decode,
        ControllerProcess(report_interval_ms=100, liveness_timeout_s=60) as controller,
        RouterProcess(
            controller=controller.target,
            engines=[
                f"id=prefill-0,role=prefill,url={prefill.url},node=node-p,agent={agents[0]}",
                f"id=decode-0,role=decode,url={decode.url},node=node-d,agent={agents[1]}",
            ],
            hash_namespace="fuzz",
            block_tokens=64,
            extra_args=["--max-prompt-tokens", str(MAX_PROMPT_TOKENS)],
        ) as router,
        httpx.Client(base_url=router.url, timeout=TIMEOUT_S) as http,
    ):
        s = RouterStack(router, controller, http)

        def healthy() -> bool:
            return http.get("/healthz").status_code == 200

        wait_for("router /healthz 200", healthy, 30, s.alive)
        yield s


# --- bodies ----------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
bad_token_ids = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**32),
    st.sampled_from((2**64, 10**30, -(2**63), 2**32 - 1, 0)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(0, 100), max_size=3),
)
token_lists = st.one_of(
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),  # valid
    st.lists(st.one_of(st.integers(0, 50_000), bad_token_ids), min_size=1, max_size=20),
    st.builds(lambda n: [1] * n, st.sampled_from((0, MAX_PROMPT_TOKENS + 1, 50_000))),
    st.lists(st.lists(st.integers(0, 50_000), max_size=5), min_size=1, max_size=3),
)
prompts = st.one_of(token_lists, st.text(max_size=40), json_values)
messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.one_of(st.sampled_from(("user", "system", "")), json_values),
                "content": st.one_of(st.text(max_size=30), json_values),
            },
        ),
        max_size=3,
    ),
    json_values,
)
counts = st.one_of(st.integers(-3, 8), st.sampled_from((2**31, 2**63, 2**64, 10**30)), json_values)
floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False), json_values)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("tiny"), json_values),
        "prompt": prompts,
        "messages": messages,
        "max_tokens": counts,
        "max_completion_tokens": counts,
        "n": counts,
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": json_values,
        "temperature": floats,
        "top_p": floats,
        "seed": json_values,
        "kv_transfer_params": json_values,
        "cache_salt": st.one_of(st.text(max_size=300), json_values),
    },
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


def nested(depth: int, left: str, right: str) -> bytes:
    return (left * depth + right * depth).encode()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        (
            b"",
            b"{",
            b'{"prompt": [1, 2',
            b'{"prompt": NaN}',
            b'{"prompt": [Infinity]}',
            b'{"max_tokens": 1e999, "prompt": [1]}',
            b'{"prompt": [' + b"9" * 5000 + b"]}",  # over Python's int digit limit
            b"\xff\xfe{}",
            b'{"prompt": "\\ud800"}',  # a lone surrogate
            nested(100_000, "[", "]"),
            b'{"prompt": ' + nested(100_000, "[", "]") + b"}",
            b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        )
    ),
    json_values.map(encoded),  # JSON that is rarely an object
)


def check_answer(s: RouterStack, path: str, response: httpx.Response, kind: str) -> None:
    s.alive()
    fuzz.TALLY.add(TARGET, path, str(response.status_code))
    assert response.status_code < 500, (
        f"{path} ({kind}) answered {response.status_code}: {response.text[:500]}"
    )
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        assert body["error"]["code"] == response.status_code, body


def post(s: RouterStack, path: str, content: bytes) -> httpx.Response:
    return s.http.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", PATHS)
def test_json_objects_with_wrong_types(stack, path):
    @fuzz.fuzz_settings(60)
    @given(bodies)
    def run(body: dict[str, Any]) -> None:
        check_answer(stack, path, post(stack, path, encoded(body)), "object")

    run()


@pytest.mark.parametrize("path", PATHS)
def test_raw_and_non_object_bodies(stack, path):
    @fuzz.fuzz_settings(30)
    @given(raw_bodies)
    def run(raw: bytes) -> None:
        response = post(stack, path, raw)
        check_answer(stack, path, response, "raw")
        assert 400 <= response.status_code < 500, response.text[:300]

    run()


def test_prompt_token_ids(stack):
    """Token id lists, bad and good: a bad id is a 400 naming prompt[i]."""

    @fuzz.fuzz_settings(60)
    @given(token_lists, st.booleans())
    def run(tokens: list[Any], stream: bool) -> None:
        body = {"model": "tiny", "prompt": tokens, "max_tokens": 2, "stream": stream}
        response = post(stack, PATHS[0], encoded(body))
        check_answer(stack, PATHS[0], response, "token ids")
        # A list holding one list of ids is the same prompt (OpenAI's batch of one).
        ids = tokens[0] if len(tokens) == 1 and isinstance(tokens[0], list) else tokens
        valid = 0 < len(ids) <= MAX_PROMPT_TOKENS and all(
            type(t) is int and 0 <= t < 2**32 for t in ids
        )
        if valid:
            assert response.status_code == 200, response.text[:300]
        else:
            assert response.status_code == 400, response.text[:300]
            assert response.json()["error"]["param"].startswith("prompt"), response.json()

    run()


# Output limits: small valid ones, and ones the router or the controller must refuse
# (no mid-range values: the engine double would really generate that many tokens).
limits: st.SearchStrategy[Any] = st.one_of(
    st.integers(-3, 8),
    st.sampled_from((2**24 + 1, 2**31, 2**63, 2**64 - 1, 2**64, 10**30, -(2**64))),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(("8", True, None, [], {}, 1.0)),
)
VALID_PROMPTS: dict[str, dict[str, Any]] = {
    PATHS[0]: {"prompt": [1, 2, 3]},
    PATHS[1]: {"messages": [{"role": "user", "content": "two words"}]},
}


@pytest.mark.parametrize("path", PATHS)
def test_valid_prompts_with_hostile_limits_and_sampling(stack, path):
    """A valid prompt with hostile output limits and sampling fields: what the router
    passes to the controller (expected output tokens) must fit there."""
    fields = {
        "max_tokens": limits,
        "n": limits,
        "temperature": floats,
        "top_p": floats,
        "stream": st.one_of(st.booleans(), json_values),
        "model": st.one_of(st.just("tiny"), json_values),
        "cache_salt": st.one_of(st.text(max_size=300), json_values),
    }
    if path == PATHS[1]:  # validated on chat; passed through untouched on completions
        fields["max_completion_tokens"] = limits

    @fuzz.fuzz_settings(40)
    @given(st.fixed_dictionaries({}, optional=fields))
    def run(extra: dict[str, Any]) -> None:
        body = {**VALID_PROMPTS[path], **extra}
        check_answer(stack, path, post(stack, path, encoded(body)), "hostile limits")

    run()


def test_a_20_mb_body_is_refused_quickly(stack):
    started = time.monotonic()
    body = b'{"prompt": "' + b"x" * (20 << 20) + b'"}'
    response = post(stack, PATHS[0], body)
    check_answer(stack, PATHS[0], response, "20 MB")
    assert response.status_code == 413, response.text[:300]
    assert time.monotonic() - started < 5


def test_still_serving_after_the_fuzzing(stack):
    """Run last (file order): the router is up, healthy, and serves a valid request."""
    stack.alive()
    assert stack.http.get("/healthz").status_code == 200
    body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2}
    assert post(stack, PATHS[0], encoded(body)).status_code == 200
    errors = [
        f"{r.get('logger')}: {r.get('msg')}: {str(r.get('exc', ''))[-400:]}"
        for r in stack.router.log_records()
        if r.get("level") in ("error", "critical")
    ]
    assert not errors, "\n".join(errors[:5])
    print("\n" + "\n".join(fuzz.TALLY.lines()))
