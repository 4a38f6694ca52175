"""`dualpath picker` (the Gateway API Inference Extension endpoint picker) as a real process,
in front of a real traffic controller process, real agents and recording engine doubles
(tests/support/recording_engine.py: they answer /tokenize and /metrics like vLLM). The test
plays Envoy's side of ext_proc with a gRPC ExternalProcessor stub: it sends the request
headers and body the way Envoy's ext_proc filter does and reads the picker's answers.

What is checked: the destination (`x-gateway-destination-endpoint` header and `envoy.lb`
dynamic metadata, the same ip:port of a prefill engine), the body rewritten with
`kv_transfer_params.dualpath` role "whole"; the subset hint restricts the choice, an empty
or unknown subset is a 503 ImmediateResponse; RESOURCE_EXHAUSTED is a 429, no prefill engine
and an unreachable controller are 503, a malformed body is 400; gRPC health SERVING; the
request is booked at the controller until the response ends (Complete) or the stream ends
before a response (Cancel); the decisions are counted on /metrics.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.launch import AgentHandle
from dualpath_agent.layout import BlockLayout
from dualpath_controller.client import ControllerClient
from dualpath_controller.process import ControllerProcess
from dualpath_router.picker import protocol
from dualpath_router.picker.process import PickerProcess
from dualpath_vllm.params import DualPathParams, Role
from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.agent_pair import prefill_and_decode_agents
from tests.support.metrics import sample_value
from tests.support.recording_engine import RecordingEngine
from tests.support.wait import free_port, wait_for

pytestmark = pytest.mark.timeout(240)

NAMESPACE = "tiny-picker-test"
BLOCK = 64
LAYOUT = BlockLayout(layers=4, block_tokens=BLOCK, bytes_per_token_layer=256)
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there picker"}]}
PICKER_ARGS = ["--max-prompt-tokens", "4096", "--schedule-wait-s", "0.3"]


def endpoint_of(engine: RecordingEngine) -> str:
    return engine.url.removeprefix("http://")


def engines_yaml(
    prefill: Sequence[RecordingEngine], decode: RecordingEngine, agents: tuple[str, str]
) -> str:
    entries: list[dict[str, Any]] = [
        {
            "id": e.engine_id,
            "role": "prefill",
            "url": e.url,
            "node": "node-p",
            "agent": agents[0],
        }
        for e in prefill
    ]
    entries.append(
        {
            "id": "decode-0",
            "role": "decode",
            "url": decode.url,
            "node": "node-d",
            "agent": agents[1],
        }
    )
    return yaml.safe_dump(entries)


class EnvoySide:
    """One ext_proc stream, driven like Envoy drives it: send a message, read the answers."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self._outgoing: queue.Queue[ext.ProcessingRequest | None] = queue.Queue()
        stub = ext_grpc.ExternalProcessorStub(self.channel)
        self.call = stub.Process(iter(self._outgoing.get, None), timeout=60)

    def send(self, message: ext.ProcessingRequest) -> None:
        self._outgoing.put(message)

    def recv(self) -> ext.ProcessingResponse:
        return next(self.call)

    def ended(self) -> bool:
        """The picker ended the stream (after an ImmediateResponse)."""
        try:
            next(self.call)
        except StopIteration:
            return True
        return False

    def close(self) -> None:
        """Half-close (Envoy is done with the request), then wait for the picker's end."""
        self._outgoing.put(None)
        for _ in self.call:
            pass
        self.channel.close()

    def cancel(self) -> None:
        """The HTTP request died before its answer (client gone, gateway reset)."""
        self.call.cancel()
        self.channel.close()


def request_headers(
    path: str = "/v1/chat/completions",
    subset: Sequence[str] | None = None,
    end_of_stream: bool = False,
    body_mode: int = modes.ProcessingMode.BUFFERED,
    method: str = "POST",
) -> ext.ProcessingRequest:
    headers = [(":path", path), (":method", method), ("content-type", "application/json")]
    message = ext.ProcessingRequest(
        request_headers=ext.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
            ),
            end_of_stream=end_of_stream,
        ),
        protocol_config=ext.ProtocolConfiguration(
            request_body_mode=body_mode,  # type: ignore[arg-type]
            response_body_mode=modes.ProcessingMode.STREAMED,
        ),
    )
    if subset is not None:
        message.metadata_context.filter_metadata[protocol.SUBSET_NAMESPACE].CopyFrom(
            protocol.subset_struct(subset)
        )
    return message


def request_body(body: bytes, end_of_stream: bool = True) -> ext.ProcessingRequest:
    return ext.ProcessingRequest(request_body=ext.HttpBody(body=body, end_of_stream=end_of_stream))


def response_headers(status: int = 200) -> ext.ProcessingRequest:
    return ext.ProcessingRequest(
        response_headers=ext.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=":status", raw_value=str(status).encode())]
            )
        )
    )


def response_body(body: bytes, end_of_stream: bool = True) -> ext.ProcessingRequest:
    return ext.ProcessingRequest(response_body=ext.HttpBody(body=body, end_of_stream=end_of_stream))


@dataclass
class Picked:
    endpoint: str
    metadata_endpoint: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def params(self) -> DualPathParams:
        return DualPathParams.from_body(self.body["kv_transfer_params"])


def set_headers(mutation: ext.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def picked(response: ext.ProcessingResponse) -> Picked:
    assert response.WhichOneof("response") == "request_body", response
    common = response.request_body.response
    headers = set_headers(common.header_mutation)
    metadata = response.dynamic_metadata.fields[protocol.DESTINATION_NAMESPACE].struct_value
    body = common.body_mutation.body
    assert headers["content-length"] == str(len(body))
    return Picked(
        headers[protocol.DESTINATION_HEADER],
        metadata.fields[protocol.DESTINATION_KEY].string_value,
        headers,
        json.loads(body),
    )


def immediate_status(response: ext.ProcessingResponse) -> tuple[int, dict[str, Any]]:
    assert response.WhichOneof("response") == "immediate_response", response
    answer = response.immediate_response
    return int(answer.status.code), json.loads(answer.body)


def refused(target: str, raw: bytes) -> tuple[EnvoySide, int, dict[str, Any]]:
    """Headers then a body the picker must refuse: the stream, the status and the error."""
    side = EnvoySide(target)
    side.send(request_headers())
    side.recv()
    side.send(request_body(raw))
    status, body = immediate_status(side.recv())
    return side, status, body


def health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


@dataclass
class Stack:
    controller: ControllerProcess
    picker: PickerProcess
    prefill: list[RecordingEngine]
    decode: RecordingEngine
    agents: tuple[AgentHandle, AgentHandle]

    def status(self) -> pb.ClusterStatus:
        with ControllerClient(self.controller.target) as client:
            return client.status()

    def finished(self, outcome: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.controller.metrics_port}/metrics").text
        return sample_value(
            text, "dualpath_controller_requests_finished_total", {"outcome": outcome}
        )

    def picker_metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        text = httpx.get(f"{self.picker.metrics_url}/metrics").text
        return sample_value(text, name, labels or {})

    def alive(self) -> None:
        for name, proc in (("picker", self.picker.proc), ("controller", self.controller.proc)):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}")

    def wait_released(self, outcome: str, before: float) -> None:
        wait_for(
            f"in_flight_requests == 0 and one more {outcome}",
            lambda: self.status().in_flight_requests == 0 and self.finished(outcome) == before + 1,
            15,
            self.alive,
        )

    def endpoints(self) -> dict[str, str]:
        """prefill engine id -> its ip:port."""
        return {e.engine_id: endpoint_of(e) for e in self.prefill}


def wait_serving(target: str, alive: Any = None) -> None:
    wait_for(
        "picker gRPC health SERVING",
        lambda: health(target, "") == health_pb2.HealthCheckResponse.SERVING,
        30,
        alive,
    )


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentHandle, AgentHandle]]:
    with prefill_and_decode_agents(tmp_path_factory.mktemp("picker-agents")) as pair:
        yield pair


@pytest.fixture(scope="module")
def stack(
    agents: tuple[AgentHandle, AgentHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("picker")
    endpoints = (agents[0].endpoint, agents[1].endpoint)
    with (
        RecordingEngine("prefill-0") as p0,
        RecordingEngine("prefill-1") as p1,
        RecordingEngine("decode-0") as d0,
        ControllerProcess(report_interval_ms=100, liveness_timeout_s=5.0) as controller,
    ):
        engines_file = work / "engines.yaml"
        engines_file.write_text(engines_yaml([p0, p1], d0, endpoints))
        with PickerProcess(
            controller=controller.target,
            engines_file=engines_file,
            hash_namespace=NAMESPACE,
            block_tokens=BLOCK,
            extra_args=PICKER_ARGS,
        ) as picker:
            s = Stack(controller, picker, [p0, p1], d0, agents)
            wait_serving(picker.target, s.alive)
            wait_for(
                "every engine registered at the controller",
                lambda: len(s.status().engines) == 3,
                30,
                s.alive,
            )
            yield s


def pick(
    stack: Stack, body: dict[str, Any], subset: Sequence[str] | None = None
) -> tuple[EnvoySide, ext.ProcessingResponse]:
    """Headers then the whole body (BUFFERED); returns the stream and the body's answer."""
    side = EnvoySide(stack.picker.target)
    side.send(request_headers(subset=subset))
    headers_answer = side.recv()
    assert headers_answer.WhichOneof("response") == "request_headers"
    assert not headers_answer.HasField("mode_override")  # BUFFERED already brings the body
    side.send(request_body(json.dumps(body).encode()))
    return side, side.recv()


def answer(side: EnvoySide, status: int = 200) -> None:
    """The engine's answer passes through the gateway: headers, then the body's end."""
    side.send(response_headers(status))
    assert side.recv().WhichOneof("response") == "response_headers"
    side.send(response_body(b'{"choices": []}'))
    assert side.recv().WhichOneof("response") == "response_body"


# ----- health ------------------------------------------------------------------------------


def test_grpc_health_is_serving_for_every_service_the_protocol_names(stack):
    for service in ("", "liveness", "readiness", protocol.EXTPROC_SERVICE):
        assert health(stack.picker.target, service) == health_pb2.HealthCheckResponse.SERVING
    ready = httpx.get(f"{stack.picker.metrics_url}/readyz")
    assert ready.status_code == 200, ready.text
    assert stack.picker_metric("dualpath_picker_ready") == 1


# ----- the happy path ----------------------------------------------------------------------


def test_a_chat_request_goes_to_a_prefill_engine_with_whole_params_and_completes(stack, agents):
    completed = stack.finished("completed")
    picks = stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "picked"})

    side, response = pick(stack, CHAT | {"max_tokens": 8})
    got = picked(response)

    assert got.endpoint in stack.endpoints().values()
    assert got.metadata_endpoint == got.endpoint  # the header and the metadata agree
    engine_id = got.headers["x-dualpath-prefill-engine"]
    assert stack.endpoints()[engine_id] == got.endpoint
    sent = dict(got.body)
    params = DualPathParams.from_body(sent.pop("kv_transfer_params"))
    assert sent == CHAT | {"max_tokens": 8}  # the client's body, as sent
    assert params.role is Role.WHOLE
    assert params.request_id == got.headers["x-dualpath-request-id"]
    assert params.read_path.value == got.headers["x-dualpath-read-path"]
    assert params.prefill_agent_endpoint == agents[0].endpoint
    assert params.decode_agent_endpoint == agents[1].endpoint
    # Tokenized by an engine (the chat template lives there).
    assert any(r.path == "/tokenize" for e in stack.prefill for r in e.requests)
    # Booked at the controller until the answer has ended.
    assert stack.status().in_flight_requests == 1
    answer(side)
    side.close()
    stack.wait_released("completed", completed)
    assert (
        stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "picked"}) == picks + 1
    )


def test_a_cached_prefix_is_counted_and_the_body_names_the_read_path(stack, agents):
    prompt = [(i * 11) % 1000 for i in range(300)]
    chain = block_chain(prompt, BLOCK, parent=root_hash(NAMESPACE))
    agents[0].client().seed_synthetic(chain[:3], LAYOUT)
    completed = stack.finished("completed")
    side = EnvoySide(stack.picker.target)
    side.send(request_headers(path="/v1/completions", body_mode=modes.ProcessingMode.NONE))
    # A filter that would not send the body is asked for it, buffered.
    first = side.recv()
    assert first.mode_override.request_body_mode == modes.ProcessingMode.BUFFERED
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 4}
    side.send(request_body(json.dumps(body).encode()))
    got = picked(side.recv())
    assert got.params.role is Role.WHOLE
    assert got.params.read_path.value in ("PE_READ", "DE_READ", "SPLIT")
    # The picker's log of the pick names the prompt and the cached prefix it scheduled.
    (record,) = [
        r
        for r in stack.picker.log_records()
        if r.get("msg") == "endpoint picked" and r.get("request_id") == got.params.request_id
    ]
    assert (record["prompt_tokens"], record["cached_tokens"]) == (300, 3 * BLOCK)
    answer(side)
    side.close()
    stack.wait_released("completed", completed)


def test_full_duplex_streamed_mode_gets_headers_then_the_whole_body(stack):
    completed = stack.finished("completed")
    side = EnvoySide(stack.picker.target)
    side.send(request_headers(body_mode=modes.ProcessingMode.FULL_DUPLEX_STREAMED))
    raw = json.dumps(CHAT).encode()
    side.send(request_body(raw[:10], end_of_stream=False))
    side.send(request_body(raw[10:], end_of_stream=True))
    headers_answer = side.recv()
    assert headers_answer.WhichOneof("response") == "request_headers"
    headers = set_headers(headers_answer.request_headers.response.header_mutation)
    metadata = headers_answer.dynamic_metadata.fields[protocol.DESTINATION_NAMESPACE]
    assert headers[protocol.DESTINATION_HEADER] in stack.endpoints().values()
    assert (
        metadata.struct_value.fields[protocol.DESTINATION_KEY].string_value
        == (headers[protocol.DESTINATION_HEADER])
    )
    body_answer = side.recv()
    streamed = body_answer.request_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    assert json.loads(streamed.body)["kv_transfer_params"]["dualpath"]["role"] == "whole"
    answer(side)
    side.close()
    stack.wait_released("completed", completed)


# ----- the subset hint ---------------------------------------------------------------------


def test_the_subset_hint_restricts_the_choice(stack):
    for engine_id, endpoint in stack.endpoints().items():
        for _ in range(3):
            completed = stack.finished("completed")
            side, response = pick(stack, CHAT, subset=[endpoint, "10.9.9.9:8000"])
            got = picked(response)
            assert got.endpoint == endpoint
            assert got.headers["x-dualpath-prefill-engine"] == engine_id
            answer(side)
            side.close()
            stack.wait_released("completed", completed)


@pytest.mark.parametrize("subset", [[], ["10.9.9.9:8000"]], ids=["empty", "no-known-endpoint"])
def test_a_subset_with_no_prefill_engine_is_a_503(stack, subset):
    before = stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "no_endpoint"})
    side, response = pick(stack, CHAT, subset=subset)
    status, body = immediate_status(response)
    assert status == 503
    assert "subset" in body["error"]["message"]
    assert side.ended()
    assert stack.status().in_flight_requests == 0
    after = stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "no_endpoint"})
    assert after == before + 1


# ----- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": "tiny"}).encode(), "messages"),
        (json.dumps(CHAT | {"kv_transfer_params": {}}).encode(), "kv_transfer_params"),
    ],
    ids=["not-json", "no-messages", "kv-transfer-params"],
)
def test_a_malformed_body_is_a_400_naming_the_problem(stack, raw, words):
    side, status, body = refused(stack.picker.target, raw)
    assert status == 400
    assert words in body["error"]["message"]
    assert side.ended()


def test_no_capacity_at_the_controller_is_a_429(stack):
    # No decode engine has HBM for a million output tokens: RESOURCE_EXHAUSTED.
    before = stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "overloaded"})
    side, response = pick(stack, CHAT | {"max_tokens": 1_000_000})
    status, body = immediate_status(response)
    assert status == 429, body
    assert side.ended()
    assert stack.status().in_flight_requests == 0
    after = stack.picker_metric("dualpath_picker_decisions_total", {"outcome": "overloaded"})
    assert after == before + 1


def test_a_stream_that_ends_before_the_response_cancels_the_request(stack):
    cancelled = stack.finished("cancelled")
    side, response = pick(stack, CHAT)
    picked(response)
    assert stack.status().in_flight_requests == 1
    side.cancel()
    stack.wait_released("cancelled", cancelled)
    labels = {"kind": "cancel", "reason": "stream_ended_before_response"}
    assert stack.picker_metric("dualpath_picker_releases_total", labels) >= 1


def test_an_engine_5xx_answer_cancels_the_request(stack):
    cancelled = stack.finished("cancelled")
    side, response = pick(stack, CHAT)
    picked(response)
    answer(side, status=503)
    side.close()
    stack.wait_released("cancelled", cancelled)
    labels = {"kind": "cancel", "reason": "engine_error"}
    assert stack.picker_metric("dualpath_picker_releases_total", labels) >= 1


def test_a_request_without_a_body_goes_to_a_ready_engine_unbooked(stack):
    side = EnvoySide(stack.picker.target)
    side.send(request_headers(path="/v1/models", method="GET", end_of_stream=True))
    response = side.recv()
    headers = set_headers(response.request_headers.response.header_mutation)
    assert headers[protocol.DESTINATION_HEADER] in stack.endpoints().values()
    assert stack.status().in_flight_requests == 0
    side.close()


def test_no_prefill_engine_is_a_503_and_not_serving(stack, tmp_path):
    engines_file = tmp_path / "engines.yaml"
    engines_file.write_text(
        yaml.safe_dump(
            [
                {
                    "id": "decode-x",
                    "role": "decode",
                    "url": stack.decode.url,
                    "node": "node-x",
                    "agent": stack.agents[1].endpoint,
                }
            ]
        )
    )
    with PickerProcess(
        controller=stack.controller.target,
        engines_file=engines_file,
        hash_namespace=NAMESPACE,
        extra_args=PICKER_ARGS,
    ) as picker:
        _, status, body = refused(picker.target, json.dumps(CHAT).encode())
        assert status == 503
        assert "no prefill engine" in body["error"]["message"]
        assert health(picker.target, "liveness") == health_pb2.HealthCheckResponse.SERVING
        wait_for(
            "readiness NOT_SERVING",
            lambda: (
                health(picker.target, "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            10,
        )


def test_an_unreachable_controller_is_a_503(stack, tmp_path):
    engines_file = tmp_path / "engines.yaml"
    endpoints = (stack.agents[0].endpoint, stack.agents[1].endpoint)
    engines_file.write_text(engines_yaml(stack.prefill, stack.decode, endpoints))
    with PickerProcess(
        controller=f"127.0.0.1:{free_port()}",
        engines_file=engines_file,
        hash_namespace=NAMESPACE,
        extra_args=PICKER_ARGS,
    ) as picker:
        wait_for(
            "the engines are up (polled) although the controller is not",
            lambda: "no prefill engine is up" not in httpx.get(f"{picker.metrics_url}/readyz").text,
            20,
        )
        _, status, body = refused(picker.target, json.dumps(CHAT).encode())
        assert status == 503
        assert "traffic controller" in body["error"]["message"]
        assert health(picker.target, "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING


def test_metrics_count_every_outcome(stack):
    text = httpx.get(f"{stack.picker.metrics_url}/metrics").text
    for outcome in ("picked", "invalid", "overloaded", "no_endpoint"):
        assert sample_value(text, "dualpath_picker_decisions_total", {"outcome": outcome}) >= 1
    assert sample_value(text, "dualpath_picker_requests_in_flight", {}) == 0
    assert httpx.get(f"{stack.picker.metrics_url}/healthz").status_code == 200


def test_picker_stops_on_sigterm(stack, tmp_path: Path):
    engines_file = tmp_path / "engines.yaml"
    engines_file.write_text("[]")
    picker = PickerProcess(
        controller=stack.controller.target,
        engines_file=engines_file,
        hash_namespace=NAMESPACE,
        extra_args=PICKER_ARGS,
    ).start()
    assert picker.stop() == 0
