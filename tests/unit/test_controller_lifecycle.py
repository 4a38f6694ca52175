"""The controller's side of the booking lifecycle (policy/lifecycle.py): read-done and
prefill-done give booked load back in steps, a batch of Schedules is decided together (FIFO,
head of line), a Session run of Schedules is one batch, and the batching window gathers
concurrent unary Schedules into one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_controller.client import ControllerClient
from dualpath_controller.server import ControllerServer, TrafficControllerService
from dualpath_controller.state import ControllerError
from prometheus_client import generate_latest

from tests.unit.test_controller_state import code_of, new_state, sched

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def batch_sizes(state) -> tuple[float, float]:
    """(count, sum) of dualpath_controller_schedule_batch_requests."""
    text = generate_latest(state.metrics.registry).decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("dualpath_controller_schedule_batch_requests_"):
            name, value = line.split(" ")
            values[name] = float(value)
    return (
        values["dualpath_controller_schedule_batch_requests_count"],
        values["dualpath_controller_schedule_batch_requests_sum"],
    )


def test_read_done_then_prefill_done_then_complete_give_load_back_in_steps():
    state = new_state()
    a = state.schedule(sched("r1", total=1_000, cached=900)).assignment
    assert a.read_path == pb.READ_PATH_PE_READ
    view = state.view
    assert view.nodes["np"].read_queue_tokens == 900
    assert view.engines["p0"].unfinished_tokens == view.engines["d0"].unfinished_tokens == 1_000
    for _ in range(2):  # idempotent
        state.progress("r1", prefill_done=False)
        assert view.nodes["np"].read_queue_tokens == 0
        assert view.engines["p0"].unfinished_tokens == 1_000
    for _ in range(2):
        state.progress("r1", prefill_done=True)
        assert view.engines["p0"].unfinished_tokens == 0
        assert view.engines["d0"].unfinished_tokens == 1_000
    state.finish("r1")
    assert view.engines["d0"].unfinished_tokens == 0 and not view.bookings
    state.progress("r1", prefill_done=True)  # finished: a no-op
    code, message = code_of(lambda: state.progress("ghost", prefill_done=False))
    assert code == grpc.StatusCode.NOT_FOUND and "ghost" in message
    text = generate_latest(state.metrics.registry).decode()
    assert 'dualpath_controller_request_progress_total{signal="read_done"} 2.0' in text
    assert 'dualpath_controller_request_progress_total{signal="prefill_done"} 2.0' in text


def test_a_batch_is_decided_fifo_and_stops_at_the_first_request_without_capacity():
    state = new_state()  # d0 has 10,000 tokens of HBM
    results = state.schedule_batch(
        [
            sched("r1", total=4_000, cached=0),
            sched("bad", total=10, cached=20),  # invalid: answered alone
            sched("r2", total=7_000, cached=0),  # does not fit next to r1
            sched("r1", total=4_000, cached=0),  # repeated in the batch: a replay
            sched("r3", total=1_000, cached=0),  # would fit, but FIFO: behind r2
        ]
    )
    assert isinstance(results[0], pb.ScheduleResponse) and not results[0].replayed
    assert isinstance(results[1], ControllerError)
    assert results[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(results[2], ControllerError) and results[2].code == RESOURCE_EXHAUSTED
    assert isinstance(results[3], pb.ScheduleResponse) and results[3].replayed
    assert results[3].assignment == results[0].assignment
    assert isinstance(results[4], ControllerError) and results[4].code == RESOURCE_EXHAUSTED
    assert "queued behind 'r2'" in results[4].message
    assert set(state.in_flight) == {"r1"}
    assert state.counters.rejected == 2 and state.counters.decisions == 1
    assert batch_sizes(state) == (1.0, 3.0)  # r1, r2, r3 decided together


def test_a_session_run_of_schedules_is_one_batch_and_other_operations_split_runs():
    state = new_state()
    service = TrafficControllerService(state, max_long_lived_calls=2, clock=lambda: 0.0)
    ops = [pb.SessionRequest(correlation_id=i, schedule=sched(f"r{i}")) for i in range(3)]
    ops.append(pb.SessionRequest(correlation_id=3, read_done=pb.ReadDoneRequest(request_id="r0")))
    ops.append(pb.SessionRequest(correlation_id=4, schedule=sched("r4")))
    ops.append(
        pb.SessionRequest(correlation_id=5, prefill_done=pb.PrefillDoneRequest(request_id="r9"))
    )
    answers = service.answer_batch(pb.SessionRequestBatch(requests=ops)).responses
    kinds = [a.WhichOneof("result") for a in answers]
    assert kinds == ["schedule", "schedule", "schedule", "read_done", "schedule", "error"]
    assert answers[5].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert batch_sizes(state) == (2.0, 4.0)  # [r0, r1, r2], then [r4]


def test_the_batching_window_decides_concurrent_unary_schedules_together():
    state = new_state()
    server = ControllerServer(state, "127.0.0.1:0", batch_window_s=0.2)
    port = server.start()
    try:
        with ControllerClient(f"127.0.0.1:{port}") as client, ThreadPoolExecutor(4) as pool:
            client.wait_ready()
            futures = [
                pool.submit(client.schedule, f"w{i}", 1_000, 900, 100, kv_bytes_per_token=10)
                for i in range(4)
            ]
            replies = [f.result(timeout=10) for f in futures]
            assert {r.assignment.request_id for r in replies} == {"w0", "w1", "w2", "w3"}
            assert batch_sizes(state) == (1.0, 4.0)
            assert client.read_done("w0") and client.prefill_done("w0")
            assert state.view.engines["p0"].unfinished_tokens == 3_000
            assert not client.prefill_done("ghost")  # missing_ok by default
            with pytest.raises(grpc.RpcError) as info:
                client.read_done("ghost", missing_ok=False)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_a_windowed_session_keeps_its_order_and_reads_on_while_the_window_is_open():
    state = new_state()
    server = ControllerServer(state, "127.0.0.1:0", batch_window_s=0.3)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TrafficControllerStub(channel)
            batches = [
                [pb.SessionRequest(correlation_id=1, schedule=sched("s1"))],
                [pb.SessionRequest(correlation_id=2, schedule=sched("s2"))],
                # Sent before s1 is answered: must not overtake it (closes the window).
                [pb.SessionRequest(correlation_id=3, complete=pb.CompleteRequest(request_id="s1"))],
            ]
            started = time.monotonic()
            replies = list(
                stub.Session(iter([pb.SessionRequestBatch(requests=b) for b in batches]))
            )
            elapsed = time.monotonic() - started
        answers = [a for reply in replies for a in reply.responses]
        assert [a.correlation_id for a in answers] == [1, 2, 3]
        assert [a.WhichOneof("result") for a in answers] == ["schedule", "schedule", "complete"]
        assert elapsed < 0.3  # the Complete closed the window early
        assert batch_sizes(state) == (1.0, 2.0)  # s1 and s2: one batch across two messages
        assert set(state.in_flight) == {"s2"}
    finally:
        server.stop()
