"""The traffic controller as a real process, driven over gRPC on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.client import ControllerClient, EngineLoad, EngineReporter
from dualpath_controller.process import ControllerProcess

from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


def register_cluster(
    client: ControllerClient, prefill_nodes: int = 2, decode_nodes: int = 2
) -> None:
    for n in range(prefill_nodes):
        for g in range(2):
            client.register_engine(f"p{n}-{g}", "prefill", f"pn{n}")
    for n in range(decode_nodes):
        for g in range(2):
            client.register_engine(
                f"d{n}-{g}",
                "decode",
                f"dn{n}",
                hbm_capacity_tokens=10_000_000,
                agent_endpoint=f"dn{n}:7000",
            )


@pytest.fixture
def controller() -> Iterator[ControllerProcess]:
    with ControllerProcess(liveness_timeout_s=60) as proc:
        yield proc


@pytest.fixture
def client(controller: ControllerProcess) -> Iterator[ControllerClient]:
    with ControllerClient(controller.target) as c:
        c.wait_ready()
        yield c


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_concurrent_clients_get_exactly_one_assignment_per_request(controller, client):
    register_cluster(client)
    workers, per_worker, shared = 8, 40, 10
    shared_answers: dict[str, set[tuple[str, str, int]]] = {
        f"shared-{k}": set() for k in range(shared)
    }
    lock = threading.Lock()
    prefill_used: set[str] = set()

    def worker(w: int) -> int:
        done = 0
        with ControllerClient(controller.target) as c:
            for i in range(per_worker):
                rid = f"w{w}-r{i}"
                a = c.schedule(rid, 2_000, 1_900, 100, kv_bytes_per_token=1_000).assignment
                assert a.request_id == rid and a.prefill_engine_id.startswith("p")
                assert a.decode_engine_id.startswith("d")
                assert a.decode_agent_endpoint.endswith(":7000")
                with lock:
                    prefill_used.add(a.prefill_engine_id)
            # Completed only now, so the load builds up and must be spread.
            for i in range(per_worker):
                c.complete(f"w{w}-r{i}")
                done += 1
            for k in range(shared):  # every worker races on the same ids
                reply = c.schedule(f"shared-{k}", 500, 400, 100, kv_bytes_per_token=1_000)
                a = reply.assignment
                with lock:
                    shared_answers[f"shared-{k}"].add(
                        (a.prefill_engine_id, a.decode_engine_id, a.read_path)
                    )
        return done

    with ThreadPoolExecutor(workers) as pool:
        assert sum(pool.map(worker, range(workers))) == workers * per_worker
    assert all(len(answers) == 1 for answers in shared_answers.values()), shared_answers
    status = client.status()
    assert status.decisions_total == workers * per_worker + shared  # replays are not decisions
    assert status.in_flight_requests == shared
    for k in range(shared):
        client.complete(f"shared-{k}")
    status = client.status()
    assert status.in_flight_requests == 0
    assert all(e.unfinished_tokens == 0 and e.assigned_requests == 0 for e in status.engines)
    assert all(n.read_queue_tokens == 0 for n in status.nodes)
    # Load was spread: every prefill engine took part.
    assert prefill_used == {"p0-0", "p0-1", "p1-0", "p1-1"}
    text = httpx.get(f"http://127.0.0.1:{controller.metrics_port}/metrics").text
    assert (
        f'dualpath_controller_decision_latency_seconds_count{{policy="paper"}} {float(status.decisions_total)}'
        in text
    )


def test_error_codes_over_the_wire(client):
    err = rpc_error(lambda: client.schedule("r", 100, 90, 10))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "no prefill engines registered" in err.details()
    err = rpc_error(lambda: client.report_load("ghost", 1, EngineLoad()))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    err = rpc_error(lambda: client.register_engine("x", "decode", "n"))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "hbm_capacity_tokens" in err.details()
    err = rpc_error(lambda: client.stub.RegisterEngine(pb.RegisterEngineRequest()))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "engine must be set" in err.details()
    client.register_engine("p", "prefill", "np")
    client.register_engine("d", "decode", "nd", hbm_capacity_tokens=1_000)
    err = rpc_error(lambda: client.schedule("r", 100, 200, 0))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "cached_tokens" in err.details()
    err = rpc_error(lambda: client.schedule("", 100, 90, 10))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "request_id" in err.details()
    client.schedule("big", 900, 800, 100)
    err = rpc_error(lambda: client.schedule("r2", 900, 800, 100))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    err = rpc_error(lambda: client.complete("nobody"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert client.complete("nobody", missing_ok=True) is False
    # The refused request is not lost: it goes through once capacity frees up.
    threading.Timer(0.3, lambda: client.complete("big")).start()
    reply = client.schedule("r2", 900, 800, 100, wait_for_capacity_s=10)
    assert reply.assignment.decode_engine_id == "d"
    assert client.status().rejected_total >= 2


def test_silent_engines_are_drained_and_come_back():
    with ControllerProcess(liveness_timeout_s=0.6, report_interval_ms=100) as proc:
        client = ControllerClient(proc.target)
        client.wait_ready()
        prefill = EngineReporter(
            client,
            pb.Engine(engine_id="p", role=pb.ENGINE_ROLE_PREFILL, node="np"),
            lambda: EngineLoad(),
        ).start()
        decode_engine = pb.Engine(
            engine_id="d", role=pb.ENGINE_ROLE_DECODE, node="nd", hbm_capacity_tokens=10_000
        )
        decode = EngineReporter(client, decode_engine, lambda: EngineLoad(free_hbm_tokens=10_000))
        decode.start()
        try:
            wait_for("registrations", lambda: len(client.status().engines) == 2)
            assert client.schedule("r1", 100, 90, 10).assignment.decode_engine_id == "d"
            decode.stop()
            wait_for("drain of d", lambda: any(e.drained for e in client.status().engines))
            drained = {
                e.engine.engine_id: e.drain_reason for e in client.status().engines if e.drained
            }
            assert drained == {"d": "missed-reports"}
            err = rpc_error(lambda: client.schedule("r2", 100, 90, 10))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "drained" in err.details()
            decode = EngineReporter(
                client, decode_engine, lambda: EngineLoad(free_hbm_tokens=10_000)
            )
            decode.start()
            reply = client.schedule("r2", 100, 90, 10, wait_for_capacity_s=10)
            assert reply.assignment.decode_engine_id == "d"
            text = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics").text
            assert "dualpath_controller_drains_total 1.0" in text
        finally:
            prefill.stop()
            decode.stop()
            client.close()


def test_a_reported_agent_failure_drains_at_once_and_reports_bring_it_back():
    """ReportAgentFailure takes the failed agent's engines out of scheduling in one call
    (the liveness timeout here is a minute), and their reports bring them back."""
    with ControllerProcess(liveness_timeout_s=60, report_interval_ms=100) as proc:
        client = ControllerClient(proc.target)
        client.wait_ready()
        register_cluster(client, prefill_nodes=1, decode_nodes=2)
        decode = [
            EngineReporter(
                client,
                pb.Engine(
                    engine_id=f"d1-{g}",
                    role=pb.ENGINE_ROLE_DECODE,
                    node="dn1",
                    hbm_capacity_tokens=10_000_000,
                    agent_endpoint="dn1:7000",
                ),
                lambda: EngineLoad(free_hbm_tokens=10_000_000),
            )
            for g in range(2)
        ]
        try:
            drained = client.report_agent_failure("dn1:7000", "connection refused")
            assert sorted(drained) == ["d1-0", "d1-1"]
            reasons = {e.engine.engine_id: e.drain_reason for e in client.status().engines}
            assert reasons["d1-0"] == reasons["d1-1"] == "agent-failed"
            for i in range(20):  # every decision avoids the failed node
                a = client.schedule(f"r{i}", 2_000, 1_900, 100).assignment
                assert a.decode_node == "dn0"
            err = rpc_error(lambda: client.report_agent_failure("", "x"))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            for reporter in decode:
                reporter.start()
            wait_for(
                "the reporting engines back in service",
                lambda: not any(e.drained for e in client.status().engines),
            )
            text = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics").text
            assert "dualpath_controller_agent_failures_total 1.0" in text
        finally:
            for reporter in decode:
                reporter.stop()
            client.close()


def test_a_restarted_controller_rebuilds_from_reports():
    first = ControllerProcess(report_interval_ms=100).start()
    port = first.grpc_port
    client = ControllerClient(f"127.0.0.1:{port}", timeout_s=2)
    reporters = [
        EngineReporter(
            client,
            pb.Engine(engine_id="p", role=pb.ENGINE_ROLE_PREFILL, node="np"),
            lambda: EngineLoad(unfinished_tokens=123, read_queue_tokens=7),
        ),
        EngineReporter(
            client,
            pb.Engine(
                engine_id="d", role=pb.ENGINE_ROLE_DECODE, node="nd", hbm_capacity_tokens=10_000
            ),
            lambda: EngineLoad(free_hbm_tokens=9_000),
        ),
    ]
    second: ControllerProcess | None = None
    try:
        client.wait_ready()
        for r in reporters:
            r.start()
        wait_for("registrations", lambda: len(client.status().engines) == 2)
        client.schedule("before", 100, 90, 10)
        first.kill()  # crash: no goodbye
        second = ControllerProcess(listen=f"127.0.0.1:{port}", report_interval_ms=100).start()

        def rebuilt() -> bool:
            try:
                status = client.status()
            except grpc.RpcError:
                return False
            return {
                e.engine.engine_id: e.last_report.unfinished_tokens for e in status.engines
            } == {
                "p": 123,
                "d": 0,
            }

        wait_for("state rebuilt from reports", rebuilt, 20)
        assert all(r.registrations >= 2 for r in reporters)
        assert client.complete("before", missing_ok=True) is False  # lost with the old process
        reply = client.schedule("after", 100, 90, 10)
        assert (reply.assignment.prefill_engine_id, reply.assignment.decode_engine_id) == ("p", "d")
        assert reply.assignment.read_path == pb.READ_PATH_DE_READ  # the reported queue (7) counts
    finally:
        for r in reporters:
            r.stop()
        client.close()
        first.stop()
        if second is not None:
            second.stop()


def test_stream_load_watch_status_and_health(controller, client):
    client.register_engine("p", "prefill", "np")
    reports = [
        pb.LoadReport(engine_id="p", report_seq=1, unfinished_tokens=10),
        pb.LoadReport(engine_id="p", report_seq=3, unfinished_tokens=30),
        pb.LoadReport(engine_id="p", report_seq=2, unfinished_tokens=20),  # stale: reordered
    ]
    reply = client.stub.StreamLoad(iter(reports), timeout=5)
    assert reply.accepted is False
    (engine,) = client.status().engines
    assert engine.last_report.report_seq == 3 and engine.unfinished_tokens == 30
    err = rpc_error(
        lambda: client.stub.StreamLoad(
            iter([pb.LoadReport(engine_id="x", report_seq=1)]), timeout=5
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    stream = client.stub.WatchStatus(pb.WatchStatusRequest(interval_ms=100), timeout=10)
    first = next(stream)
    client.register_engine("d", "decode", "nd", hbm_capacity_tokens=100)
    second = next(stream)
    third = next(stream)
    stream.cancel()
    assert len(first.engines) == 1 and len(third.engines) == 2 and second.policy == "paper"
    base = f"http://127.0.0.1:{controller.metrics_port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and "prefill 1/1 active" in ready.text
    assert controller.stop() == 0  # SIGTERM: clean exit
    assert '"msg": "traffic controller stopped"' in controller.log_text()


def test_streaming_calls_cannot_starve_scheduling():
    # 4 workers: at most 2 long-lived calls; the rest of the pool stays for unary calls.
    with ControllerProcess(extra_args=["--max-workers", "4"]) as proc:
        client = ControllerClient(proc.target)
        client.wait_ready()
        register_cluster(client, 1, 1)
        watches = [
            client.stub.WatchStatus(pb.WatchStatusRequest(interval_ms=100), timeout=20)
            for _ in range(2)
        ]
        try:
            for watch in watches:
                next(watch)  # both streams are being served
            third = client.stub.WatchStatus(pb.WatchStatusRequest(interval_ms=100), timeout=20)
            err = rpc_error(lambda: next(third))
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "ReportLoad" in err.details()
            for i in range(20):
                client.schedule(f"r{i}", 100, 90, 10)
            assert client.status().decisions_total == 20
        finally:
            for watch in watches:
                watch.cancel()
            client.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy-param", "z=0.5"], "'z'=0.5 out of range"),
        (["--policy-param", "gamma=1"], "no parameter 'gamma'"),
    ],
)
def test_bad_command_lines_fail_with_a_clear_message(args, message):
    proc = ControllerProcess(extra_args=args)
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        proc.start()
    assert message in str(info.value)
