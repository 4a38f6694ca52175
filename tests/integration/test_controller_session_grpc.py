"""The Session stream (Schedule / Complete / Cancel with correlation ids) against the real
`dualpath controller` process: concurrent streams, per-operation errors, idempotency across
the unary calls and the stream, cancelled streams, the session limit, controller restarts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_controller.client import (
    AsyncControllerSession,
    ControllerClient,
    ControllerSession,
    SessionOperationError,
)
from dualpath_controller.process import ControllerProcess

from tests.support.metrics import sample_value

pytestmark = pytest.mark.timeout(120)

HBM = 10_000_000


def register_cluster(client: ControllerClient, hbm: int = HBM) -> None:
    for n in range(2):
        for g in range(2):
            client.register_engine(f"p{n}-{g}", "prefill", f"pn{n}")
            client.register_engine(
                f"d{n}-{g}", "decode", f"dn{n}", hbm_capacity_tokens=hbm, agent_endpoint=f"dn{n}:7"
            )


@pytest.fixture(scope="module")
def controller() -> Iterator[ControllerProcess]:
    with ControllerProcess(liveness_timeout_s=600) as proc:
        with ControllerClient(proc.target) as client:
            client.wait_ready()
            register_cluster(client)
        yield proc


@pytest.fixture
def client(controller: ControllerProcess) -> Iterator[ControllerClient]:
    with ControllerClient(controller.target) as c:
        yield c


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def assert_all_released(client: ControllerClient) -> None:
    status = client.status()
    assert status.in_flight_requests == 0
    assert all(e.unfinished_tokens == 0 and e.assigned_requests == 0 for e in status.engines)
    assert all(n.read_queue_tokens == 0 for n in status.nodes)


def metric(controller: ControllerProcess, name: str, labels: dict[str, str] | None = None) -> float:
    """The series' value; raises when the metric is not exported at all."""
    text = httpx.get(f"http://127.0.0.1:{controller.metrics_port}/metrics").text
    return sample_value(text, name, labels)


def test_concurrent_streams_pipeline_and_release_everything(controller, client):
    before = client.status().decisions_total
    frontends, per_frontend, shared = 4, 60, 8
    answers: dict[str, set[tuple[str, str]]] = {f"t1-shared-{k}": set() for k in range(shared)}
    lock = threading.Lock()

    def frontend(f: int) -> int:
        # Frontends 0-1 use one stream, 2-3 spread their operations over two.
        with ControllerSession(controller.target, streams=1 + f // 2) as session:
            futures = {
                f"t1-f{f}-r{i}": session.schedule_async(
                    f"t1-f{f}-r{i}", 2_000, 1_900, 100, kv_bytes_per_token=1_000
                )
                for i in range(per_frontend)  # all in flight at once: pipelined
            }
            for rid, future in futures.items():
                a = future.result(10).assignment
                assert a.request_id == rid and a.prefill_engine_id.startswith("p")
                assert a.decode_agent_endpoint.endswith(":7")
                assert a.pe_read_bytes + a.de_read_bytes == 1_900 * 1_000
            for k in range(shared):  # every frontend (and the unary client) races on these
                a = session.schedule(f"t1-shared-{k}", 500, 400, 100).assignment
                with lock:
                    answers[a.request_id].add((a.prefill_engine_id, a.decode_engine_id))
            done = [session.complete_async(rid) for rid in futures]
            assert all(isinstance(f.result(10), pb.CompleteResponse) for f in done)
            messages, operations = session.batching()
            assert operations == 2 * per_frontend + shared and 0 < messages <= operations
            return len(futures)

    with ThreadPoolExecutor(frontends + 1) as pool:
        unary = pool.submit(lambda: [client.schedule(rid, 500, 400, 100) for rid in answers])
        assert sum(pool.map(frontend, range(frontends))) == frontends * per_frontend
        for reply in unary.result():
            a = reply.assignment
            answers[a.request_id].add((a.prefill_engine_id, a.decode_engine_id))
    assert all(len(engines) == 1 for engines in answers.values()), answers
    status = client.status()
    assert status.decisions_total - before == frontends * per_frontend + shared
    for rid in answers:
        client.complete(rid)
    assert_all_released(client)
    assert metric(controller, "dualpath_controller_sessions_open") == 0


RPC_ERRORS = "dualpath_controller_rpc_errors_total"
SCHEDULE_INVALID = {"code": "INVALID_ARGUMENT", "method": "Session.Schedule"}


def test_failed_operations_are_answered_and_the_stream_goes_on(controller, client):
    invalid_before = metric(controller, RPC_ERRORS, SCHEDULE_INVALID)
    session = ControllerSession(controller.target, streams=1)
    try:
        err = rpc_error(lambda: session.schedule("t2-bad", 100, 200, 0))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "cached_tokens" in err.details()
        assert isinstance(err, SessionOperationError)
        err = rpc_error(lambda: session.schedule("", 100, 90, 10))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.details()
        err = rpc_error(lambda: session.complete("t2-nobody"))
        assert err.code() is grpc.StatusCode.NOT_FOUND
        assert session.complete("t2-nobody", missing_ok=True) is False
        err = rpc_error(lambda: session.schedule("t2-huge", 12_000_000, 0, 12_000_000))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # more than any DE's HBM
        # Good and bad operations pipelined together: each gets its own answer.
        mixed = [
            session.schedule_async("t2-ok-1", 100, 90, 10),
            session.cancel_async("t2-nobody"),
            session.schedule_async("t2-ok-2", 100, 90, 10),
        ]
        assert mixed[0].result(10).assignment.request_id == "t2-ok-1"
        assert mixed[1].exception(10).code() is grpc.StatusCode.NOT_FOUND
        assert mixed[2].result(10).assignment.request_id == "t2-ok-2"
        assert session.cancel("t2-ok-1", "test") and session.complete("t2-ok-2")
        assert session.streams_opened == 1  # no error ended the stream
        assert session.batching()[1] == 10
    finally:
        session.close()
    assert metric(controller, RPC_ERRORS, SCHEDULE_INVALID) - invalid_before == 2
    assert_all_released(client)


def test_raw_stream_protocol_errors(controller, client):
    stub = pb_grpc.TrafficControllerStub(client.channel)
    # An operation with nothing set is answered with INVALID_ARGUMENT; the batch goes on.
    batch = pb.SessionRequestBatch(
        requests=[
            pb.SessionRequest(correlation_id=7),
            pb.SessionRequest(correlation_id=8, complete=pb.CompleteRequest(request_id="t3-x")),
        ]
    )
    (reply,) = list(stub.Session(iter([batch]), timeout=10))
    assert [r.correlation_id for r in reply.responses] == [7, 8]
    assert reply.responses[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "operation must be set" in reply.responses[0].error.message
    assert reply.responses[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    # An oversized batch is a client bug: the stream ends with INVALID_ARGUMENT.
    huge = pb.SessionRequestBatch(
        requests=[pb.SessionRequest(correlation_id=i) for i in range(1025)]
    )
    err = rpc_error(lambda: list(stub.Session(iter([huge]), timeout=10)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "1025" in err.details()


def test_idempotency_spans_unary_calls_and_streams(controller, client):
    with ControllerSession(controller.target) as session:
        first = client.schedule("t4-a", 1_000, 900, 100).assignment
        again = session.schedule("t4-a", 1_000, 900, 100)
        assert again.replayed and again.assignment == first
        streamed = session.schedule("t4-b", 1_000, 900, 100).assignment
        replay = client.schedule("t4-b", 1_000, 900, 100)
        assert replay.replayed and replay.assignment == streamed
        err = rpc_error(lambda: session.schedule("t4-a", 1_000, 800, 100))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "different" in err.details()
        assert session.complete("t4-a") and client.complete("t4-a")  # repeat: no-op
        assert client.complete("t4-b") and session.complete("t4-b")
        after = session.schedule("t4-a", 1_000, 900, 100)  # finished ids still replay
        assert after.replayed and after.assignment == first
    assert_all_released(client)


def test_a_cancelled_stream_releases_nothing(controller, client):
    before = client.status().decisions_total
    stub = pb_grpc.TrafficControllerStub(client.channel)
    first_answered, cancelled = threading.Event(), threading.Event()

    def batches() -> Iterator[pb.SessionRequestBatch]:
        ops = [
            pb.SessionRequest(correlation_id=i, schedule=pb.ScheduleRequest(
                request_id=f"t5-{i}", total_tokens=1_000, cached_tokens=900, append_tokens=100
            ))
            for i in range(20)
        ]  # fmt: skip
        yield pb.SessionRequestBatch(requests=ops[:10])
        first_answered.wait(10)
        yield pb.SessionRequestBatch(requests=ops[10:])  # may or may not be applied
        cancelled.wait(10)  # keep the stream open until it is cancelled

    call = stub.Session(batches(), timeout=30)
    answered = {r.schedule.assignment.request_id for r in next(call).responses}
    first_answered.set()
    call.cancel()
    cancelled.set()
    assert answered == {f"t5-{i}" for i in range(10)}
    assert rpc_error(lambda: next(call)).code() is grpc.StatusCode.CANCELLED
    status = client.status()
    applied = status.decisions_total - before
    assert applied in (10, 20)  # the second batch is applied whole or not at all
    assert status.in_flight_requests == applied  # the cancel released nothing
    # Whoever retries (unary here) gets the booked assignment or a first decision, once.
    for i in range(20):
        reply = client.schedule(f"t5-{i}", 1_000, 900, 100)
        assert reply.replayed == (i < applied)
    assert client.status().decisions_total - before == 20
    for i in range(20):
        client.complete(f"t5-{i}")
    assert_all_released(client)
    assert metric(controller, "dualpath_controller_sessions_open") == 0
    assert "Traceback" not in controller.log_text()


def test_releases_wait_for_a_schedule_to_ride_along(controller, client):
    # A long linger makes the timing certain on a busy machine (the default is 2 ms).
    with ControllerSession(controller.target, release_linger_s=0.5) as session:
        session.schedule("t8-a", 100, 90, 10)
        assert session.batching() == (1, 1)
        done = session.complete_async("t8-a")
        assert not done.done() and session.batching() == (1, 1)  # lingering
        session.schedule("t8-b", 100, 90, 10)  # takes the Complete along
        assert done.result(5) == pb.CompleteResponse() and session.batching() == (2, 3)
        alone = session.complete_async("t8-b")  # nothing to ride with: sent after the linger
        assert isinstance(alone.result(5), pb.CompleteResponse)
        assert session.batching() == (3, 4)
    assert_all_released(client)


async def test_asyncio_session(controller, client):
    async with AsyncControllerSession(controller.target, streams=2) as session:
        await session.wait_ready()
        futures = [session.schedule_nowait(pb.ScheduleRequest(
            request_id=f"t6-{i}", total_tokens=1_000, cached_tokens=900, append_tokens=100
        )) for i in range(30)]  # fmt: skip
        for i, future in enumerate(futures):
            assert (await session.wait(future)).assignment.request_id == f"t6-{i}"
        assert (await session.schedule("t6-0", 1_000, 900, 100)).replayed
        with pytest.raises(grpc.RpcError) as info:
            await session.complete("t6-nobody")
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert await session.complete("t6-nobody", missing_ok=True) is False
        for i in range(30):
            assert await session.complete(f"t6-{i}")
    assert_all_released(client)


def test_session_limit_and_controller_restart():
    first = ControllerProcess(report_interval_ms=100, extra_args=["--max-sessions", "1"]).start()
    port = first.grpc_port
    second: ControllerProcess | None = None
    client = ControllerClient(first.target)
    one = ControllerSession(first.target, timeout_s=5)
    other = ControllerSession(first.target, timeout_s=5)
    try:
        client.wait_ready()
        register_cluster(client)
        one.schedule("t7-a", 100, 90, 10)
        err = rpc_error(lambda: other.schedule("t7-b", 100, 90, 10))
        assert (
            err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-sessions" in err.details()
        )
        client.schedule("t7-b", 100, 90, 10)  # unary calls are not affected
        first.kill()  # crash: the open stream ends
        err = rpc_error(lambda: one.schedule("t7-c", 100, 90, 10))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        second = ControllerProcess(
            listen=f"127.0.0.1:{port}", extra_args=["--max-sessions", "1"]
        ).start()
        register_cluster(client)  # what the engines' reporters would do
        reply = one.schedule("t7-c", 100, 90, 10, wait_for_capacity_s=10)  # a new stream
        assert not reply.replayed and one.streams_opened >= 2
        assert one.complete("t7-a", missing_ok=True) is False  # lost with the old process
    finally:
        one.close()
        other.close()
        client.close()
        first.stop()
        if second is not None:
            second.stop()
