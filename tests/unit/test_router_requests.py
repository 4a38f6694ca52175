"""The router's pure request handling: OpenAI body validation and the prefill/decode bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_router.errors import RouterError
from dualpath_router.openai_models import Endpoint, validate_request
from dualpath_router.rewrite import Route, decode_body, prefill_body
from dualpath_vllm.params import DualPathParams, Role

LIMIT = 1000


def valid(body: Any, endpoint: Endpoint = Endpoint.COMPLETIONS):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return validate_request(endpoint, raw, LIMIT)


def refused(body: Any, endpoint: Endpoint = Endpoint.COMPLETIONS) -> RouterError:
    with pytest.raises(RouterError) as info:
        valid(body, endpoint)
    assert info.value.status == 400
    assert info.value.body()["error"]["type"] == "invalid_request_error"
    return info.value


def test_token_id_prompt_is_kept_as_ids_and_the_body_untouched():
    body = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 5, "foo": {"bar": 1}}
    request = valid(body)
    assert request.prompt_token_ids == (1, 2, 3)
    assert request.prompt_text is None
    assert request.max_output_tokens == 5
    assert request.stream is False
    assert request.body == body  # unknown fields pass through untouched


@pytest.mark.parametrize(
    ("prompt", "ids", "text"),
    [
        ("hello world", None, "hello world"),
        (["hello"], None, "hello"),
        ([[7, 8]], (7, 8), None),
        ([0, 2**32 - 1], (0, 2**32 - 1), None),
    ],
)
def test_prompt_forms(prompt, ids, text):
    request = valid({"prompt": prompt, "stream": True})
    assert (request.prompt_token_ids, request.prompt_text, request.stream) == (ids, text, True)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "prompt", "required"),
        ({"prompt": None}, "prompt", "required"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": []}, "prompt", "empty"),
        ({"prompt": [1, -1]}, "prompt[1]", "-1"),
        ({"prompt": [1, 2.5]}, "prompt[1]", "2.5"),
        ({"prompt": [True]}, "prompt[0]", "True"),
        ({"prompt": [1, "2"]}, "prompt[1]", "'2'"),
        ({"prompt": [2**32]}, "prompt[0]", "4294967296"),
        ({"prompt": [[1, -5]]}, "prompt[0][1]", "-5"),
        ({"prompt": ["a", "b"]}, "prompt", "batch of 2"),
        ({"prompt": 5}, "prompt", "int"),
        ({"prompt": list(range(LIMIT + 1))}, "prompt", f"limit of {LIMIT}"),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens", "integer"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"prompt": "x", "max_tokens": 2.0}, "max_tokens", "integer"),
        ({"prompt": "x", "stream": "yes"}, "stream", "boolean"),
        ({"prompt": "x", "temperature": "hot"}, "temperature", "number"),
        ({"prompt": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
        ({"prompt": "x", "kv_transfer_params": {}}, "kv_transfer_params", "router"),
    ],
)
def test_bad_completions_name_the_field(body, param, words):
    error = refused(body)
    assert error.param == param
    assert error.message.startswith(param)
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "messages", "required"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]", "object"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "required"),
        (
            {"messages": [{"role": "user"}], "max_completion_tokens": -3},
            "max_completion_tokens",
            "",
        ),
    ],
)
def test_bad_chat_requests_name_the_field(body, param, words):
    error = refused(body, Endpoint.CHAT)
    assert error.param == param
    assert words in error.message


def test_chat_output_limit_prefers_max_completion_tokens():
    messages = [{"role": "user", "content": "hi"}]
    assert valid({"messages": messages, "max_tokens": 9}, Endpoint.CHAT).max_output_tokens == 9
    both = {"messages": messages, "max_tokens": 9, "max_completion_tokens": 4}
    request = valid(both, Endpoint.CHAT)
    assert request.max_output_tokens == 4
    assert request.messages == tuple(messages)
    assert request.prompt_param == "messages"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{", "not valid JSON"),
        (b'{"prompt": NaN}', "NaN"),
        (b"[1, 2]", "JSON object, got list"),
        (b'{"prompt": "\xc3\x28"}', "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_malformed_bodies(raw, words):
    assert words in refused(raw).message


ROUTE = Route(
    request_id="r-1",
    prefill_engine_id="p0",
    decode_engine_id="d0",
    read_path="SPLIT",
    de_read_fraction=0.25,
    prefill_agent_endpoint="pn:7001",
    decode_agent_endpoint="dn:7002",
)


def test_prefill_body_asks_for_the_first_token_only():
    body = {
        "model": "m",
        "prompt": [1, 2],
        "max_tokens": 50,
        "max_completion_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 10,
        "temperature": 0,
        "extra": [1],
    }
    out = prefill_body(body, ROUTE)
    assert out == {
        "model": "m",
        "prompt": [1, 2],
        "max_tokens": 1,
        "stream": False,
        "temperature": 0,
        "extra": [1],
        "kv_transfer_params": {
            "dualpath": {
                "request_id": "r-1",
                "role": "prefill",
                "read_path": "SPLIT",
                "de_read_fraction": 0.25,
                "decode_agent_endpoint": "dn:7002",
                "prefill_agent_endpoint": "pn:7001",
            }
        },
    }
    assert body["max_tokens"] == 50 and "kv_transfer_params" not in body  # not modified


def test_decode_body_keeps_the_clients_limits_and_stream():
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user"}],
        "max_completion_tokens": 7,
        "stream": True,
    }
    out = decode_body(body, ROUTE)
    params = out.pop("kv_transfer_params")
    assert out == body
    # What the engine's connector reads back: the decode role, and where the KV is.
    assert DualPathParams.from_body(params) == DualPathParams(
        request_id="r-1",
        role=Role.DECODE,
        decode_agent_endpoint="dn:7002",
        prefill_agent_endpoint="pn:7001",
    )
    out["messages"][0]["role"] = "x"
    assert body["messages"][0]["role"] == "user"  # a deep copy


def test_route_from_assignment():
    assignment = pb.Assignment(
        request_id="r",
        prefill_engine_id="p",
        decode_engine_id="d",
        read_path=pb.READ_PATH_DE_READ,
        de_read_fraction=1.0,
        prefill_agent_endpoint="a:1",
        decode_agent_endpoint="b:2",
    )
    route = Route.from_assignment(assignment)
    assert (route.read_path, route.de_read_fraction, route.disaggregated) == ("DE_READ", 1.0, True)
    assignment.decode_engine_id = "p"
    assert not Route.from_assignment(assignment).disaggregated
    assignment.read_path = pb.READ_PATH_UNSPECIFIED
    with pytest.raises(ValueError, match="no read path"):
        Route.from_assignment(assignment)
