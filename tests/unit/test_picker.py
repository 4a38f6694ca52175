"""The endpoint picker's pure parts and its decision's error mapping: engines as ip:port,
the subset hint, the ext_proc messages of the EPP protocol, and how the controller's and
the request's failures become HTTP statuses (400/404/413/429/503) with nothing left booked.

The decision tests run `Decider` against an in-memory engine pool and a controller session
double that answers what each test asks (the real processes are in
tests/integration/test_picker_extproc.py)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.client import SessionOperationError
from dualpath_router.config import EngineSpec, build_config
from dualpath_router.engines import EngineState
from dualpath_router.metrics import RouterMetrics
from dualpath_router.picker import protocol
from dualpath_router.picker.decision import Decider, PickError, PickRequest
from dualpath_router.picker.endpoints import engine_endpoint, prefill_candidates
from dualpath_router.picker.metrics import PickerMetrics
from dualpath_vllm.params import DualPathParams, Role
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from prometheus_client import generate_latest

from tests.support.metrics import sample_value


def spec(engine_id: str, role: str, url: str) -> EngineSpec:
    return EngineSpec(id=engine_id, role=role, url=url, node="n", agent="10.0.0.9:7000")  # type: ignore[arg-type]


P0 = spec("prefill-0", "prefill", "http://10.0.0.1:8000")
P1 = spec("prefill-1", "prefill", "http://10.0.0.2:8000/")
D0 = spec("decode-0", "decode", "http://10.0.0.3:8000")


# ----- endpoints ---------------------------------------------------------------------------


def test_an_engines_endpoint_is_its_urls_host_and_port():
    assert engine_endpoint(P0) == "10.0.0.1:8000"
    assert engine_endpoint(spec("a", "prefill", "http://10.0.0.5")) == "10.0.0.5:80"
    assert engine_endpoint(spec("b", "prefill", "https://host.example")) == "host.example:443"
    assert engine_endpoint(spec("c", "prefill", "http://[fd00::1]:9000")) == "[fd00::1]:9000"


def test_without_a_subset_every_prefill_engine_is_a_candidate():
    got = prefill_candidates([P1, D0, P0], None)
    assert got.engine_ids == ("prefill-0", "prefill-1")
    assert not got.restricted


def test_the_subset_maps_to_prefill_engines_through_their_urls():
    got = prefill_candidates([P0, P1, D0], ["10.0.0.2:8000", "10.0.0.3:8000", "1.1.1.1:1"])
    # The decode engine's endpoint is no prefill candidate, the unknown one is reported.
    assert got.engine_ids == ("prefill-1",)
    assert got.restricted
    assert got.unknown == ("1.1.1.1:1", "10.0.0.3:8000")


def test_an_empty_subset_allows_nothing():
    got = prefill_candidates([P0, P1], [])
    assert got.engine_ids == () and got.restricted


# ----- protocol messages -------------------------------------------------------------------


def with_subset(value: Any) -> ext.ProcessingRequest:
    message = ext.ProcessingRequest()
    hint = message.metadata_context.filter_metadata[protocol.SUBSET_NAMESPACE]
    hint.update({protocol.SUBSET_KEY: value})
    return message


def test_the_subset_hint_is_read_from_the_filter_metadata():
    assert protocol.subset_hint(ext.ProcessingRequest()) is None
    assert protocol.subset_hint(with_subset(["10.0.0.1:8000", "10.0.0.2:8000"])) == (
        "10.0.0.1:8000",
        "10.0.0.2:8000",
    )
    assert protocol.subset_hint(with_subset([])) == ()
    assert protocol.subset_hint(with_subset("10.0.0.1:8000, 10.0.0.2:8000")) == (
        "10.0.0.1:8000",
        "10.0.0.2:8000",
    )
    # Another key in the namespace is no subset.
    other = ext.ProcessingRequest()
    other.metadata_context.filter_metadata[protocol.SUBSET_NAMESPACE].update({"x": 1})
    assert protocol.subset_hint(other) is None


@pytest.mark.parametrize("value", [7, [1, 2], {"a": "b"}])
def test_a_subset_hint_of_another_shape_is_a_protocol_error(value):
    with pytest.raises(protocol.ProtocolError, match=protocol.SUBSET_KEY):
        protocol.subset_hint(with_subset(value))


def test_the_destination_is_the_same_in_the_header_and_the_metadata():
    response = protocol.buffered_destination(protocol.Destination("10.0.0.1:8000", b'{"a":1}'))
    common = response.request_body.response
    headers = {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}
    assert headers[protocol.DESTINATION_HEADER] == b"10.0.0.1:8000"
    assert headers["content-length"] == b"7"
    assert common.body_mutation.body == b'{"a":1}'
    lb = response.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000"


def test_an_immediate_response_carries_the_status_and_the_json_body():
    response = protocol.immediate(429, b'{"error": {}}')
    assert response.immediate_response.status.code == 429
    assert response.immediate_response.body == b'{"error": {}}'


def test_response_chunks_are_echoed_only_in_full_duplex_mode():
    chunk = ext.HttpBody(body=b"data: x\n\n", end_of_stream=True)
    plain = protocol.continue_response_body(chunk, full_duplex=False)
    assert not plain.response_body.HasField("response")
    echoed = protocol.continue_response_body(chunk, full_duplex=True)
    streamed = echoed.response_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (b"data: x\n\n", True)


# ----- the decision ------------------------------------------------------------------------


@dataclass
class FakePool:
    states: dict[str, EngineState]
    routed: dict[str, int] = field(default_factory=dict)

    def get(self, engine_id: str) -> EngineState | None:
        return self.states.get(engine_id)

    def add_routed(self, engine_id: str, tokens: int, requests: int = 1) -> None:
        self.routed[engine_id] = self.routed.get(engine_id, 0) + requests


class FakePrefix:
    async def cached_tokens(self, tokens: Any, request_id: str = "", cache_salt: Any = None) -> int:
        return 128


@dataclass
class FakeSession:
    """Answers Schedule with `assignment`, or raises `error`; records releases."""

    assignment: pb.Assignment | None = None
    error: grpc.StatusCode | None = None
    scheduled: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

    async def schedule(self, request_id: str, *args: Any, **kwargs: Any) -> pb.ScheduleResponse:
        self.scheduled.append({"request_id": request_id, "args": args, **kwargs})
        if self.error is not None:
            raise SessionOperationError(self.error, "as the test asked")
        assignment = pb.Assignment()
        assignment.CopyFrom(self.assignment)
        assignment.request_id = request_id
        return pb.ScheduleResponse(assignment=assignment)

    async def cancel(self, request_id: str, reason: str, missing_ok: bool = False) -> None:
        self.cancelled.append((request_id, reason))

    async def complete(self, request_id: str, missing_ok: bool = False) -> None:
        self.completed.append(request_id)


@dataclass
class FakeRuntime:
    config: Any
    pool: FakePool
    session: FakeSession
    prefix: FakePrefix = field(default_factory=FakePrefix)
    metrics: RouterMetrics = field(default_factory=RouterMetrics)


def assignment(prefill: str = "prefill-1") -> pb.Assignment:
    return pb.Assignment(
        prefill_engine_id=prefill,
        decode_engine_id="decode-0",
        read_path=pb.READ_PATH_DE_READ,
        de_read_fraction=1.0,
        prefill_agent_endpoint="10.0.0.9:7000",
        decode_agent_endpoint="10.0.0.8:7000",
    )


def decider(session: FakeSession, up: tuple[str, ...] = ("prefill-0", "prefill-1")) -> Decider:
    config = build_config(
        engine_args=[
            "id=prefill-0,role=prefill,url=http://10.0.0.1:8000,node=n,agent=10.0.0.9:7000",
            "id=prefill-1,role=prefill,url=http://10.0.0.2:8000,node=n,agent=10.0.0.9:7000",
            "id=decode-0,role=decode,url=http://10.0.0.3:8000,node=m,agent=10.0.0.8:7000",
        ],
        engines_file=None,
        controller="127.0.0.1:1",
        hash_namespace="ns",
        max_body_bytes=2_000,
        insecure=True,
    )
    states = {e.id: EngineState(e, up=e.id in up or e.role == "decode") for e in config.engines}
    runtime = FakeRuntime(config, FakePool(states), session)
    return Decider(runtime, PickerMetrics(runtime.metrics.registry))  # type: ignore[arg-type]


PROMPT = {"model": "m", "prompt": list(range(200)), "max_tokens": 3}


def request(
    body: Any = PROMPT, subset: tuple[str, ...] | None = None, path: str = ""
) -> PickRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return PickRequest(path or "/v1/completions", {}, raw, subset)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_pick_names_the_prefill_engine_and_carries_whole_params():
    session = FakeSession(assignment())
    d = decider(session)
    pick = await d.decide(request(subset=("10.0.0.2:8000", "10.0.0.1:8000")))
    assert (pick.endpoint, pick.engine.id) == ("10.0.0.2:8000", "prefill-1")
    assert (pick.prompt_tokens, pick.cached_tokens) == (200, 128)
    (call,) = session.scheduled
    assert call["prefill_candidates"] == ("prefill-0", "prefill-1")
    assert call["expected_output_tokens"] == 3
    body = json.loads(pick.body)
    params = DualPathParams.from_body(body.pop("kv_transfer_params"))
    assert body == PROMPT
    assert params.role is Role.WHOLE and params.read_path.value == "DE_READ"
    assert params.decode_agent_endpoint == "10.0.0.8:7000"
    assert d.runtime.pool.routed == {"prefill-1": 1}  # type: ignore[attr-defined]
    d.release(pick)
    await settle()
    assert session.completed == [pick.request_id]
    assert d.runtime.pool.routed == {"prefill-1": 0}  # type: ignore[attr-defined]


async def test_without_a_subset_no_candidates_are_sent():
    session = FakeSession(assignment())
    await decider(session).decide(request())
    assert session.scheduled[0]["prefill_candidates"] == ()


async def test_only_ready_subset_engines_are_candidates():
    session = FakeSession(assignment("prefill-1"))
    await decider(session, up=("prefill-1",)).decide(
        request(subset=("10.0.0.1:8000", "10.0.0.2:8000"))
    )
    assert session.scheduled[0]["prefill_candidates"] == ("prefill-1",)


@pytest.mark.parametrize(
    "code, status, outcome",
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "overloaded"),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid"),
        (grpc.StatusCode.UNAVAILABLE, 503, "unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "unavailable"),
    ],
)
async def test_controller_errors_map_to_statuses(code, status, outcome):
    session = FakeSession(error=code)
    with pytest.raises(PickError) as caught:
        await decider(session).decide(request())
    assert (caught.value.status, caught.value.outcome) == (status, outcome)
    assert json.loads(caught.value.body())["error"]["code"] == status
    await settle()
    # Refused outright: not booked. Lost answers (deadline, unavailable): cancelled to be sure.
    booked_maybe = code not in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bool(session.cancelled) is booked_maybe


@pytest.mark.parametrize(
    "pick_request, status, words",
    [
        (request(b"{nope"), 400, "not valid JSON"),
        (request({"model": "m"}), 400, "prompt"),
        (request(PROMPT | {"kv_transfer_params": {}}), 400, "kv_transfer_params"),
        (request(path="/v1/embeddings"), 404, "/v1/embeddings"),
        (request({"prompt": "x" * 3_000}), 413, "over the limit"),
        (request(subset=()), 503, "subset"),
        (request(subset=("10.0.0.3:8000",)), 503, "subset"),
    ],
    ids=["json", "no-prompt", "kv-params", "path", "too-big", "empty-subset", "decode-only"],
)
async def test_bad_requests_and_empty_subsets_are_refused_before_schedule(
    pick_request, status, words
):
    session = FakeSession(assignment())
    with pytest.raises(PickError) as caught:
        await decider(session).decide(pick_request)
    assert caught.value.status == status
    assert words in caught.value.message
    assert session.scheduled == []


async def test_no_ready_prefill_engine_is_a_503():
    session = FakeSession(assignment())
    with pytest.raises(PickError, match="is ready") as caught:
        await decider(session, up=()).decide(request())
    assert caught.value.status == 503 and session.scheduled == []


@pytest.mark.parametrize("chosen", ["prefill-9", "prefill-0"])
async def test_a_controller_choice_outside_the_candidates_is_cancelled(chosen):
    # prefill-9: not fronted here; prefill-0: outside the subset (an older controller).
    session = FakeSession(assignment(chosen))
    d = decider(session)
    with pytest.raises(PickError) as caught:
        await d.decide(request(subset=("10.0.0.2:8000",)))
    assert caught.value.status == 503
    await settle()
    assert len(session.cancelled) == 1
    text = generate_latest(d.runtime.metrics.registry).decode()
    labels = {"kind": "cancel", "reason": "controller_choice"}
    assert sample_value(text, "dualpath_picker_releases_total", labels) == 1


async def test_a_stream_cancelled_during_schedule_cancels_the_maybe_booked_request():
    class Stalling(FakeSession):
        async def schedule(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
            self.scheduled.append({"request_id": request_id})
            await asyncio.Event().wait()  # the controller never answers

    session = Stalling(assignment())
    task = asyncio.ensure_future(decider(session).decide(request()))
    while not session.scheduled:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert session.cancelled == [
        (session.scheduled[0]["request_id"], "stream ended during the decision")
    ]
