"""`dualpath router` as a real process, in front of a real traffic controller process, real
agents (prefix lookups, node read queues) and recording engine doubles
(tests/support/recording_engine.py: tiny HTTP servers that speak vLLM's OpenAI subset and
record what they get). Tests with real vLLM engines are separate.

What is checked: the exact prefill and decode bodies (kv_transfer_params included), the
answer relayed byte for byte (JSON and SSE), Complete after an answer and Cancel after any
failure (the controller's in_flight_requests back to 0, its cancelled counter up), 4xx
naming the field, 503 naming the engine or the controller, load reports from the engines'
/metrics, re-registration after a controller restart, /metrics and /healthz.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.launch import AgentHandle
from dualpath_agent.layout import BlockLayout
from dualpath_controller.client import ControllerClient
from dualpath_controller.process import ControllerProcess
from dualpath_router.process import RouterProcess
from dualpath_vllm.params import DualPathParams, Role
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_pair import prefill_and_decode_agents
from tests.support.certs import write_tls_secret
from tests.support.metrics import sample_value
from tests.support.recording_engine import RecordingEngine
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "tiny-router-test"
BLOCK = 64
# The agents' block geometry (what seeded blocks look like; the router only hashes ids).
LAYOUT = BlockLayout(layers=4, block_tokens=BLOCK, bytes_per_token_layer=256)


@dataclass
class Stack:
    controller: ControllerProcess
    router: RouterProcess
    prefill: RecordingEngine
    decode: RecordingEngine
    controller_tls_ca: Path | None = None

    def status(self) -> pb.ClusterStatus:
        with ControllerClient(self.controller.target, tls_ca=self.controller_tls_ca) as client:
            return client.status()

    def finished(self, outcome: str) -> float:
        """The controller's count of requests released as `outcome` (completed/cancelled)."""
        text = httpx.get(f"http://127.0.0.1:{self.controller.metrics_port}/metrics").text
        return sample_value(
            text, "dualpath_controller_requests_finished_total", {"outcome": outcome}
        )

    def progress(self, signal: str) -> float:
        """The controller's count of progress signals (read_done, prefill_done) applied."""
        text = httpx.get(f"http://127.0.0.1:{self.controller.metrics_port}/metrics").text
        return sample_value(text, "dualpath_controller_request_progress_total", {"signal": signal})

    def wait_released(self, outcome: str, before: float) -> None:
        """Nothing booked any more, and one more request released as `outcome`."""
        wait_for(
            f"in_flight_requests == 0 and one more {outcome}",
            lambda: self.status().in_flight_requests == 0 and self.finished(outcome) == before + 1,
            15,
            self.alive,
        )

    def alive(self) -> None:
        for name, proc in (("router", self.router.proc), ("controller", self.controller.proc)):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}")

    def wait_healthy(self) -> dict[str, Any]:
        """/healthz answers 200 (controller reachable, engines in service) and every engine
        is registered."""
        wait_for(
            "router /healthz 200 with every engine registered",
            lambda: (
                httpx.get(f"{self.router.url}/healthz").status_code == 200
                and all(
                    e["registered"]
                    for e in httpx.get(f"{self.router.url}/healthz").json()["engines"].values()
                )
            ),
            30,
            self.alive,
        )
        return httpx.get(f"{self.router.url}/healthz").json()  # type: ignore[no-any-return]


def engine_specs(
    prefill: RecordingEngine, decode: RecordingEngine, agents: tuple[str, str]
) -> list[str]:
    return [
        f"id=prefill-0,role=prefill,url={prefill.url},node=node-p,agent={agents[0]}",
        f"id=decode-0,role=decode,url={decode.url},node=node-d,agent={agents[1]}",
    ]


@contextmanager
def running_stack(
    agents: tuple[str, str],
    controller_port: int = 0,
    liveness_timeout_s: float = 5.0,
    controller_tls: Path | None = None,
    router_extra_args: Sequence[str] = (),
) -> Iterator[Stack]:
    """Engines, controller and router; `controller_tls`: a TLS Secret directory the
    controller serves with (tls.crt, tls.key) and the router trusts (ca.crt)."""
    controller_args, router_args = [], list(router_extra_args)
    if controller_tls is not None:
        controller_args = ["--tls-cert-file", str(controller_tls / "tls.crt")]
        controller_args += ["--tls-key-file", str(controller_tls / "tls.key")]
        router_args += ["--controller-tls-ca", str(controller_tls / "ca.crt")]
    with (
        RecordingEngine("prefill-0") as prefill,
        RecordingEngine("decode-0") as decode,
        ControllerProcess(
            listen=f"127.0.0.1:{controller_port}",
            report_interval_ms=100,
            liveness_timeout_s=liveness_timeout_s,
            extra_args=controller_args,
        ) as controller,
        RouterProcess(
            controller=controller.target,
            engines=engine_specs(prefill, decode, agents),
            hash_namespace=NAMESPACE,
            block_tokens=BLOCK,
            extra_args=["--max-prompt-tokens", "4096", "--max-body-bytes", "200000", *router_args],
        ) as router,
    ):
        stack = Stack(
            controller, router, prefill, decode, controller_tls and controller_tls / "ca.crt"
        )
        stack.wait_healthy()
        yield stack


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentHandle, AgentHandle]]:
    """One real agent per node (the store is shared in production; here blocks are seeded
    into the prefill node's agent, which the router asks)."""
    with prefill_and_decode_agents(tmp_path_factory.mktemp("router-agents")) as pair:
        yield pair


@pytest.fixture(scope="module")
def stack(agents: tuple[AgentHandle, AgentHandle]) -> Iterator[Stack]:
    with running_stack((agents[0].endpoint, agents[1].endpoint)) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_engines(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        s: Stack = request.getfixturevalue("stack")
        for engine in (s.prefill, s.decode):
            engine.clear()
            engine.knobs.chunk_delay_s = 0.0
            engine.knobs.failures.clear()


def dead_agents() -> tuple[str, str]:
    return (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")


def route_of(response: httpx.Response) -> dict[str, str]:
    return {
        k.removeprefix("x-dualpath-"): v
        for k, v in response.headers.items()
        if k.startswith("x-dualpath-")
    }


# ----- the happy paths ---------------------------------------------------------------------


def test_token_ids_completion_prefill_then_decode_with_kv_transfer_params(stack, agents):
    prompt = [(i * 7) % 1000 for i in range(300)]
    chain = block_chain(prompt, BLOCK, parent=root_hash(NAMESPACE))
    agents[0].client().seed_synthetic(chain[:3], LAYOUT)  # 3 of its 4 full blocks are stored
    completed = stack.finished("completed")
    prefills_done = stack.progress("prefill_done")
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 5, "temperature": 0, "seed": 7}

    response = httpx.post(f"{stack.router.url}/v1/completions", json=body)

    assert response.status_code == 200, response.text
    route = route_of(response)
    assert route["prompt-tokens"] == "300"
    assert route["cached-tokens"] == str(3 * BLOCK)
    (prefill_call,) = stack.prefill.completions()
    (decode_call,) = stack.decode.completions()
    rid = route["request-id"]
    assert prefill_call.body == {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 1,
        "stream": False,
        "temperature": 0,
        "seed": 7,
        "kv_transfer_params": {
            "dualpath": {
                "request_id": rid,
                "role": "prefill",
                "read_path": route["read-path"],
                "de_read_fraction": pytest.approx(
                    prefill_call.body["kv_transfer_params"]["dualpath"]["de_read_fraction"]
                ),
                "decode_agent_endpoint": agents[1].endpoint,
                "prefill_agent_endpoint": agents[0].endpoint,
            }
        },
    }
    assert route["read-path"] in ("PE_READ", "DE_READ", "SPLIT")
    decode_body = dict(decode_call.body)
    params = DualPathParams.from_body(decode_body.pop("kv_transfer_params"))
    assert decode_body == body
    assert params == DualPathParams(
        request_id=rid,
        role=Role.DECODE,
        decode_agent_endpoint=agents[1].endpoint,
        prefill_agent_endpoint=agents[0].endpoint,
    )
    assert prefill_call.at <= decode_call.at
    assert response.content == decode_call.sent  # the decode engine's answer, unchanged
    assert (route["prefill-engine"], route["decode-engine"]) == ("prefill-0", "decode-0")
    stack.wait_released("completed", completed)
    # The prefill engine's answer was signalled (read and prefill done) before Complete.
    assert stack.progress("prefill_done") == prefills_done + 1


def test_streamed_chat_is_tokenized_then_relayed_byte_for_byte(stack):
    completed = stack.finished("completed")
    messages = [{"role": "user", "content": "write a haiku about storage bandwidth"}]
    body = {"messages": messages, "stream": True, "max_completion_tokens": 6}
    with httpx.stream("POST", f"{stack.router.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        streamed = b"".join(response.iter_raw())
        route = route_of(response)
    (tokenize,) = stack.prefill.calls("/tokenize")  # an engine that is up, prefill first
    assert tokenize.body == {"messages": messages}
    tokens = json.loads(tokenize.sent)["tokens"]
    assert route["prompt-tokens"] == str(len(tokens))
    (prefill_call,) = stack.prefill.completions()
    assert prefill_call.path == "/v1/chat/completions"
    assert prefill_call.body["max_tokens"] == 1 and prefill_call.body["stream"] is False
    assert "max_completion_tokens" not in prefill_call.body
    (decode_call,) = stack.decode.completions()
    assert decode_call.body["stream"] is True and decode_call.body["max_completion_tokens"] == 6
    assert decode_call.body["kv_transfer_params"]["dualpath"]["role"] == "decode"
    assert streamed == decode_call.sent and streamed.endswith(b"data: [DONE]\n\n")
    assert streamed.count(b"data: ") == 7
    stack.wait_released("completed", completed)


def test_load_reports_come_from_the_engines_metrics(stack, agents):
    stack.decode.knobs.running, stack.decode.knobs.waiting = 3, 1
    stack.decode.knobs.kv_usage = 0.25  # of 1000 blocks x 64 tokens
    try:

        def decode_status() -> pb.EngineStatus:
            return next(e for e in stack.status().engines if e.engine.engine_id == "decode-0")

        wait_for(
            "the decode engine's load at the controller",
            lambda: decode_status().last_report.unfinished_requests == 4,
            10,
            stack.alive,
        )
        status = decode_status()
        assert status.engine.role == pb.ENGINE_ROLE_DECODE
        assert status.engine.node == "node-d"
        assert status.engine.agent_endpoint == agents[1].endpoint
        assert status.engine.hbm_capacity_tokens == 64_000  # vllm:cache_config_info
        assert status.last_report.unfinished_tokens == 16_000
        assert status.last_report.free_hbm_tokens == 48_000
        assert not status.drained
    finally:
        stack.decode.knobs.running = stack.decode.knobs.waiting = 0
        stack.decode.knobs.kv_usage = 0.0


def test_metrics_and_healthz(stack):
    httpx.post(f"{stack.router.url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2})
    httpx.post(f"{stack.router.url}/v1/completions", json={"prompt": [-1]})
    text = httpx.get(f"{stack.router.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    ok = [
        labels
        for (name, labels), value in samples.items()
        if name == "dualpath_router_requests_total" and ("outcome", "ok") in labels and value >= 1
    ]
    assert any(dict(labels)["read_path"] in ("PE_READ", "DE_READ", "SPLIT") for labels in ok)
    assert (
        samples[
            (
                "dualpath_router_requests_total",
                (("endpoint", "completions"), ("outcome", "invalid"), ("read_path", "none")),
            )
        ]
        >= 1
    )
    assert any(name == "dualpath_router_ttft_seconds_count" for name, _ in samples)
    assert any(name == "dualpath_router_request_seconds_count" for name, _ in samples)
    health = httpx.get(f"{stack.router.url}/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["controller"]["ok"] is True
    assert {k: (v["up"], v["registered"]) for k, v in body["engines"].items()} == {
        "prefill-0": (True, True),
        "decode-0": (True, True),
    }
    models = httpx.get(f"{stack.router.url}/v1/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "tiny"


# ----- bad input: 4xx naming the field, nothing scheduled, no engine called --------------------


@pytest.mark.parametrize(
    ("path", "content", "status", "param", "words"),
    [
        ("/v1/completions", b'{"prompt": [1, 2', 400, None, "not valid JSON"),
        ("/v1/completions", b'{"prompt": [5, -3]}', 400, "prompt[1]", "-3"),
        ("/v1/completions", b'{"prompt": [5, "six"]}', 400, "prompt[1]", "'six'"),
        ("/v1/completions", b'{"max_tokens": 4}', 400, "prompt", "required"),
        ("/v1/completions", json.dumps({"prompt": [1] * 5000}).encode(), 400, "prompt", "4096"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}', 400, "max_tokens", "integer"),
        ("/v1/chat/completions", b'{"model": "tiny"}', 400, "messages", "required"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"content": "hi"}]}',
            400,
            "messages[0].role",
            "required",
        ),
        ("/v1/completions", json.dumps({"prompt": "x" * 300_000}).encode(), 413, None, "limit"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(stack, path, content, status, param, words):
    decisions = stack.status().decisions_total
    response = httpx.post(
        f"{stack.router.url}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    if param:
        assert error["message"].startswith(param)
    assert stack.status().decisions_total == decisions
    assert stack.prefill.completions() == [] and stack.decode.completions() == []


# ----- failures after Schedule: the request is cancelled ----------------------------------------


def test_an_engines_400_is_passed_through_and_the_request_cancelled(stack):
    cancelled = stack.finished("cancelled")
    error = {
        "error": {
            "message": "This model's maximum context length is 2048 tokens",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    stack.decode.fail_next(400, error)
    response = httpx.post(f"{stack.router.url}/v1/completions", json={"prompt": [1] * 100})
    assert response.status_code == 400
    assert response.json() == error
    stack.wait_released("cancelled", cancelled)


def test_an_engines_5xx_is_a_503_naming_it_and_the_request_cancelled(stack):
    cancelled = stack.finished("cancelled")
    stack.prefill.fail_next(500, {"error": {"message": "EngineCore died"}})
    response = httpx.post(f"{stack.router.url}/v1/completions", json={"prompt": [1] * 100})
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "prefill engine prefill-0" in message and "EngineCore died" in message
    assert stack.decode.completions() == []  # the decode side never heard of it
    stack.wait_released("cancelled", cancelled)


def test_client_disconnect_mid_stream_cancels_and_closes_the_engine_stream(stack):
    cancelled = stack.finished("cancelled")
    stack.decode.knobs.chunk_delay_s = 0.1
    body = {"prompt": [3] * 100, "stream": True, "max_tokens": 200}  # ~20 s if read to the end
    with httpx.stream("POST", f"{stack.router.url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    stack.wait_released("cancelled", cancelled)
    (decode_call,) = stack.decode.completions()
    wait_for("the decode engine to see the hang-up", lambda: decode_call.aborted, 10, stack.alive)


def test_client_disconnect_before_the_answer_cancels(stack):
    cancelled = stack.finished("cancelled")
    stack.decode.knobs.chunk_delay_s = 3.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.router.url}/v1/completions", json={"prompt": [4] * 100}, timeout=1.0)
    stack.wait_released("cancelled", cancelled)


# ----- engines, agents and the controller going away ----------------------------------------


def test_engine_down_is_a_503_naming_it_and_nothing_stays_booked():
    with running_stack(dead_agents()) as s:
        cancelled = s.finished("cancelled")
        ok = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [1] * 200})
        assert ok.status_code == 200
        assert route_of(ok)["cached-tokens"] == "0"  # agents unreachable: counted as not cached
        assert any(
            r.get("msg", "").startswith("prefix lookup failed") for r in s.router.log_records()
        )
        # The fallback shows in metrics too, not only in the log.
        metrics = httpx.get(f"{s.router.url}/metrics").text
        assert re.search(
            r"^dualpath_router_prefix_lookup_failures_total\{.*\} [1-9]", metrics, re.M
        )
        s.decode.stop()
        response = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [1] * 200})
        assert response.status_code == 503
        assert "decode engine decode-0" in response.json()["error"]["message"]
        s.wait_released("cancelled", cancelled)
        s.prefill.stop()
        response = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [1] * 200})
        assert response.status_code == 503  # controller (drained) or engine: either names it
        message = response.json()["error"]["message"]
        assert "prefill-0" in message or "traffic controller" in message
        wait_for("nothing booked", lambda: s.status().in_flight_requests == 0, 10, s.alive)
        wait_for(
            "/healthz to say no engine is up",
            lambda: (
                httpx.get(f"{s.router.url}/healthz").json()["problems"]
                == ["no prefill engine is up", "no decode engine is up"]
            ),
            10,
            s.alive,
        )
        assert httpx.get(f"{s.router.url}/healthz").status_code == 503


def test_controller_down_is_a_503_and_engines_are_registered_again_after_a_restart():
    port = free_port()
    with running_stack(dead_agents(), controller_port=port) as s:
        s.controller.kill()
        response = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [2] * 100})
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert message.startswith(f"traffic controller 127.0.0.1:{port}")
        assert s.prefill.completions() == [] and s.decode.completions() == []
        health = httpx.get(f"{s.router.url}/healthz")
        assert health.status_code == 503 and health.json()["controller"]["ok"] is False

        with ControllerProcess(listen=f"127.0.0.1:{port}", report_interval_ms=100) as again:
            s.controller = again
            health_body = s.wait_healthy()  # the engines registered themselves again
            assert all(e["registered"] for e in health_body["engines"].values())
            response = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [2] * 100})
            assert response.status_code == 200, response.text
            wait_for("nothing booked", lambda: s.status().in_flight_requests == 0, 10, s.alive)


def test_a_controller_served_over_tls(tmp_path):
    secret = write_tls_secret(tmp_path / "tls", ["localhost"], ["127.0.0.1"])
    with running_stack(dead_agents(), controller_tls=secret) as s:
        response = httpx.post(f"{s.router.url}/v1/completions", json={"prompt": [9] * 70})
        assert response.status_code == 200, response.text
        wait_for("nothing booked", lambda: s.status().in_flight_requests == 0, 10, s.alive)
