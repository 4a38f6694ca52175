"""What the fuzz tests (tests/integration/test_fuzz_*.py) found, pinned down in-process:
corrupt request bytes are INVALID_ARGUMENT on both kinds of gRPC server (unary calls,
request streams, grpc.aio's context.read()), caller-given address spans cannot overflow the
agent's descriptor arithmetic, and the router refuses deeply nested JSON, lone UTF-16
surrogates and output limits that do not fit the controller's uint64 with a 400."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from dualpath.v1 import agent_pb2, agent_pb2_grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_agent.validation import MAX_ADDRESS, check_layer_span
from dualpath_common import grpc_input
from dualpath_router.errors import RouterError
from dualpath_router.openai_models import Endpoint, parse_json_object, validate_request

CORRUPT = b"\x0a\x80\x80\x80\x80\x10"  # field 1, length 4 GiB, no data


# ----- gRPC: the threaded server -------------------------------------------------------------


class AgentDouble(agent_pb2_grpc.AgentServicer):
    """Maps ValueError to INVALID_ARGUMENT, as the agent's service does."""

    def Health(self, request: Any, context: grpc.ServicerContext) -> Any:
        return agent_pb2.HealthResponse(serving=True)

    def ReadBlock(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield agent_pb2.ReadBlockChunk(data=b"x")

    def PutBlocks(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            return agent_pb2.PutBlocksResponse(blocks_written=sum(1 for _ in requests))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


@pytest.fixture
def agent_channel() -> Iterator[grpc.Channel]:
    server = grpc.server(ThreadPoolExecutor(4))
    grpc_input.add_servicer(agent_pb2_grpc.add_AgentServicer_to_server, AgentDouble(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        server.stop(0).wait()


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""  # type: ignore[attr-defined]


def test_threaded_server_refuses_corrupt_requests_as_invalid_argument(agent_channel):
    health = agent_channel.unary_unary("/dualpath.v1.Agent/Health")
    assert agent_pb2.HealthResponse.FromString(health(b"", timeout=5)).serving
    code, details = code_of(lambda: health(CORRUPT, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "dualpath.v1.Agent/Health" in details and "not a valid protobuf message" in details
    read = agent_channel.unary_stream("/dualpath.v1.Agent/ReadBlock")
    assert code_of(lambda: list(read(CORRUPT, timeout=5)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    put = agent_channel.stream_unary("/dualpath.v1.Agent/PutBlocks")
    reply = put(iter([b"", b""]), timeout=5)
    assert agent_pb2.PutBlocksResponse.FromString(reply).blocks_written == 2
    code, _ = code_of(lambda: put(iter([b"", CORRUPT]), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ----- gRPC: grpc.aio -----------------------------------------------------------------------


class ControllerDouble(pb_grpc.TrafficControllerServicer):
    async def Schedule(self, request: Any, context: Any) -> Any:
        return pb.ScheduleResponse(replayed=True)

    async def StreamLoad(self, requests: AsyncIterator[Any], context: Any) -> Any:
        accepted = False
        async for report in requests:
            accepted = report.report_seq > 0
        return pb.ReportLoadResponse(accepted=accepted)

    async def Session(self, requests: Any, context: Any) -> None:
        while (batch := await context.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            await context.write(pb.SessionResponseBatch(responses=[
                pb.SessionResponse(correlation_id=r.correlation_id) for r in batch.requests
            ]))  # fmt: skip

    async def WatchStatus(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.ClusterStatus(policy="double")


def test_aio_server_refuses_corrupt_requests_as_invalid_argument():
    async def scenario() -> None:
        server = grpc.aio.server()
        grpc_input.add_servicer(
            pb_grpc.add_TrafficControllerServicer_to_server, ControllerDouble(), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await check_aio(channel)
        finally:
            await server.stop(0)

    asyncio.run(scenario())


async def aio_code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        await call
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


async def check_aio(channel: Any) -> None:
    prefix = "/dualpath.v1.TrafficController/"
    schedule = channel.unary_unary(prefix + "Schedule")
    assert pb.ScheduleResponse.FromString(await schedule(b"", timeout=5)).replayed
    assert await aio_code(schedule(CORRUPT, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    watch = channel.unary_stream(prefix + "WatchStatus")
    assert [m async for m in watch(b"", timeout=5)]
    call = watch(CORRUPT, timeout=5)
    assert await aio_code(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
    load = channel.stream_unary(prefix + "StreamLoad")
    good = pb.LoadReport(report_seq=1).SerializeToString()
    assert pb.ReportLoadResponse.FromString(await load(iter([good]), timeout=5)).accepted
    assert await aio_code(load(iter([good, CORRUPT]), timeout=5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    session = channel.stream_stream(prefix + "Session")
    batch = pb.SessionRequestBatch(requests=[pb.SessionRequest(correlation_id=7)])
    call = session(iter([batch.SerializeToString(), CORRUPT]), timeout=5)
    first = pb.SessionResponseBatch.FromString(await call.read())
    assert first.responses[0].correlation_id == 7  # answered before the corrupt batch
    assert await aio_code(call.read()) == grpc.StatusCode.INVALID_ARGUMENT


# ----- the agent's address spans ---------------------------------------------------------------


def test_layer_spans_must_end_inside_the_address_space():
    check_layer_span(MAX_ADDRESS - 4 * 100, 100, 4, 100, "target_address")  # ends exactly there
    with pytest.raises(ValueError, match="target_address"):
        check_layer_span(MAX_ADDRESS - 4 * 100, 100, 4, 101, "target_address")
    with pytest.raises(ValueError, match="source_address"):
        check_layer_span(2**64 - 2, 0, 1, 1, "source_address")
    with pytest.raises(ValueError):
        check_layer_span(4096, 2**62, 4, 1, "source_address")


# ----- the router's bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b'{"prompt": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\uDFFF": 1}', "lone UTF-16 surrogate"),
    ],
)
def test_router_bodies_that_broke_the_router_are_a_400(raw, words):
    with pytest.raises(RouterError) as info:
        parse_json_object(raw)
    assert info.value.status == 400 and words in info.value.message


def test_a_surrogate_pair_is_one_character():
    assert parse_json_object(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_output_limits_must_fit_the_controllers_uint64(field):
    body = b'{"messages": [{"role": "user"}], "%s": %d}'
    ok = validate_request(Endpoint.CHAT, body % (field.encode(), 2**64 - 1), 100)
    assert ok.max_output_tokens == 2**64 - 1
    with pytest.raises(RouterError) as info:
        validate_request(Endpoint.CHAT, body % (field.encode(), 2**64), 100)
    assert info.value.status == 400 and info.value.param == field
