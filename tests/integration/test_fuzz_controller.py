"""Fuzzing a real traffic controller process with bad input, over every RPC of its service.

For each method: messages of its input type with hostile field values, valid messages with
one or two fields made hostile, raw wire bytes, and messages of other types; request
streams (StreamLoad, Session) get several of those. Property: each call ends within its
deadline with OK or a clean status (tests/support/fuzz.py: CLEAN_CODES; never UNKNOWN or
INTERNAL, never DEADLINE_EXCEEDED), Session's per-operation errors are clean too, every
reply parses, and the process stays up and serving. Cases run are tallied and printed in
the terminal summary.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from dualpath.v1 import agent_pb2
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.process import ControllerProcess
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzz

pytestmark = pytest.mark.timeout(120)

TARGET = "controller"
SERVICE = pb.DESCRIPTOR.services_by_name["TrafficController"]
METHODS = {m.name: m for m in SERVICE.methods}
TYPES = fuzz.all_message_types(pb, agent_pb2)
TIMEOUT_S = 5.0
# Replies read before hanging up: WatchStatus goes on forever (and may legitimately wait
# its interval, up to 2^32 ms, for the second one).
MAX_REPLIES = {"WatchStatus": 1}
CLEAN_OPERATION_CODES = {c.value[0] for c in fuzz.CLEAN_CODES}


def valid_engine(i: int = 0, role: int = pb.ENGINE_ROLE_PREFILL) -> pb.Engine:
    return pb.Engine(
        engine_id=f"fuzz-{i}",
        role=role,
        node=f"node-{i}",
        hbm_capacity_tokens=1_000_000,
        agent_endpoint="127.0.0.1:1",
    )


# Valid requests that the mutations start from (so a hostile field is met past the
# first checks).
BASES: dict[str, Message] = {
    "RegisterEngine": pb.RegisterEngineRequest(engine=valid_engine()),
    "DeregisterEngine": pb.DeregisterEngineRequest(engine_id="fuzz-0"),
    "ReportLoad": pb.LoadReport(
        engine_id="fuzz-0", report_seq=1, unfinished_requests=1, free_hbm_tokens=1000
    ),
    "ReportAgentFailure": pb.AgentFailureReport(agent_endpoint="127.0.0.1:1", reason="fuzz"),
    "StreamLoad": pb.LoadReport(engine_id="fuzz-1", report_seq=1),
    "Schedule": pb.ScheduleRequest(
        request_id="r", total_tokens=100, cached_tokens=64, append_tokens=36, kv_bytes_per_token=1
    ),
    "Complete": pb.CompleteRequest(request_id="r"),
    "Cancel": pb.CancelRequest(request_id="r", reason="fuzz"),
    "WatchStatus": pb.WatchStatusRequest(interval_ms=100),
    "Session": pb.SessionRequestBatch(
        requests=[
            pb.SessionRequest(correlation_id=1, schedule=pb.ScheduleRequest(request_id="s")),
            pb.SessionRequest(correlation_id=2, complete=pb.CompleteRequest(request_id="s")),
        ]
    ),
}
OVERRIDES = {"agent_endpoint": st.sampled_from(fuzz.CLOSED_PORT_ENDPOINTS + fuzz.BAD_ENDPOINTS)}


@pytest.fixture(scope="module")
def controller() -> Iterator[ControllerProcess]:
    with ControllerProcess(liveness_timeout_s=60) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(controller: ControllerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(controller.target, options=options) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        # A cluster to schedule on, so Schedule and Session reach the policy.
        stub = ch.unary_unary(fuzz.method_path(METHODS["RegisterEngine"]), None, None)
        for i, role in enumerate((pb.ENGINE_ROLE_PREFILL, pb.ENGINE_ROLE_DECODE)):
            request = pb.RegisterEngineRequest(engine=valid_engine(10 + i, role))
            stub(request.SerializeToString(), timeout=TIMEOUT_S)
        yield ch


def run_case(
    controller: ControllerProcess,
    channel: grpc.Channel,
    method: MethodDescriptor,
    payloads: list[bytes],
    kind: str,
) -> fuzz.Outcome:
    outcome = fuzz.call_raw(channel, method, payloads, TIMEOUT_S, MAX_REPLIES.get(method.name, 10))
    assert controller.proc is not None and controller.proc.poll() is None, (
        f"the controller exited with {controller.proc and controller.proc.returncode} after"
        f" {method.name} ({kind}):\n{controller.log_text()[-3000:]}"
    )
    fuzz.check_outcome(TARGET, method, outcome, kind=kind)
    if method.name == "Session":
        for reply in outcome.replies:
            for answer in pb.SessionResponseBatch.FromString(reply).responses:
                if answer.WhichOneof("result") == "error":
                    assert answer.error.code in CLEAN_OPERATION_CODES, answer.error
    return outcome


def run_property(controller, channel, method, one, examples: int, kind: str) -> None:  # type: ignore[no-untyped-def]
    """`examples` cases of `one` payload (one to four on a request stream) against method."""

    @fuzz.fuzz_settings(examples)
    @given(fuzz.payloads_for(method, one))
    def run(payloads: list[bytes]) -> None:
        run_case(controller, channel, method, payloads, kind)

    run()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hostile_field_values(controller, channel, name):
    method = METHODS[name]
    one = fuzz.serialized(fuzz.messages(method.input_type, OVERRIDES))
    run_property(controller, channel, method, one, 30, "hostile fields")


@pytest.mark.parametrize("name", sorted(BASES))
def test_valid_requests_with_hostile_fields(controller, channel, name):
    method = METHODS[name]
    one = fuzz.serialized(fuzz.mutations(BASES[name], OVERRIDES))
    run_property(controller, channel, method, one, 30, "mutated valid request")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_raw_bytes(controller, channel, name):
    method = METHODS[name]

    @fuzz.fuzz_settings(20)
    @given(fuzz.payloads_for(method, fuzz.raw_payloads()))
    def run(payloads: list[bytes]) -> None:
        outcome = run_case(controller, channel, method, payloads, "raw bytes")
        cls = fuzz.message_class(method.input_type)
        if not method.client_streaming and not fuzz.parses_as(cls, payloads[0]):
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome

    run()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_messages_of_the_wrong_type(controller, channel, name):
    method = METHODS[name]

    @fuzz.fuzz_settings(15)
    @given(fuzz.payloads_for(method, fuzz.wrong_type_payloads(method, TYPES)))
    def run(payloads: list[bytes]) -> None:
        run_case(controller, channel, method, payloads, "wrong message type")

    run()


def test_oversized_message_is_refused_cleanly(controller, channel):
    """Over gRPC's default 4 MiB receive limit: RESOURCE_EXHAUSTED, not a crash."""
    method = METHODS["Schedule"]
    payload = pb.ScheduleRequest(request_id="x" * (5 << 20)).SerializeToString()
    outcome = fuzz.call_raw(channel, method, [payload], TIMEOUT_S)
    fuzz.check_outcome(TARGET, method, outcome, kind="5 MiB message")
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_still_serving_after_the_fuzzing(controller, channel):
    """Run last (file order): the process is up, answers GetStatus and /readyz."""
    assert controller.proc is not None and controller.proc.poll() is None
    reply = channel.unary_unary(fuzz.method_path(METHODS["GetStatus"]), None, None)(
        pb.StatusRequest().SerializeToString(), timeout=TIMEOUT_S
    )
    status = pb.ClusterStatus.FromString(reply)
    assert status.policy == "paper"
    ready = httpx.get(f"http://127.0.0.1:{controller.metrics_port}/readyz", timeout=TIMEOUT_S)
    assert ready.status_code in (200, 503)  # answers (503: no engine in service is fine)
    # No unhandled exception was logged (gRPC logs one per corrupt request unless refused).
    errors = [r for r in controller.log_records() if r.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
    print("\n" + "\n".join(fuzz.TALLY.lines()))
