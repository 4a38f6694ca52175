"""The controller client's shared pieces without a server: the one schedule signature
(ScheduleArgs / `taking`), the one retry policy in its sync and async forms, the one
finish-or-missing, and the blocking calls both blocking clients inherit."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import fields
from types import SimpleNamespace

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_controller.client import (
    AsyncControllerSession,
    ControllerClient,
    ControllerSession,
    ScheduleArgs,
    SessionConfig,
    SessionOperationError,
    finish_or_missing,
    retry_while_busy,
)
from dualpath_controller.client import retry as retry_module
from dualpath_controller.client.blocking import BlockingCalls
from dualpath_controller.client.retry import (
    MAX_BACKOFF_S,
    finish_or_missing_async,
    retry_while_busy_async,
)

BUSY = grpc.StatusCode.RESOURCE_EXHAUSTED
DOWN = grpc.StatusCode.UNAVAILABLE


def error(code: grpc.StatusCode) -> SessionOperationError:
    return SessionOperationError(code, code.name.lower())


class FakeClock:
    """monotonic/sleep for the retry module: sleeping advances time, and is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(
        retry_module, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep)
    )
    monkeypatch.setattr(retry_module, "asyncio", SimpleNamespace(sleep=fake.async_sleep))
    yield fake


class Script:
    """A call that fails with the given codes in turn, then answers "ok"."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes = list(codes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.codes:
            raise error(self.codes.pop(0))
        return "ok"

    async def coroutine(self) -> str:
        return self()


# ----- the schedule signature -----


def test_schedule_args_build_the_message_field_for_field():
    args = ScheduleArgs(
        "r1",
        1_000,
        900,
        100,
        expected_output_tokens=7,
        kv_bytes_per_token=3,
        session_id="s",
        prefill_candidates=("p1", "p2"),
    )
    message = args.message()
    # Every field of the message is an argument (a field added to the proto must be added
    # here too), and each one arrives (a repeated field as the same sequence).
    assert {f.name for f in fields(args)} == set(pb.ScheduleRequest.DESCRIPTOR.fields_by_name)
    for field in fields(args):
        sent, given = getattr(message, field.name), getattr(args, field.name)
        if isinstance(given, tuple):
            sent = tuple(sent)
        assert sent == given, field.name
    with pytest.raises(TypeError):
        ScheduleArgs("r1", 1_000, 900, 100, 7)  # type: ignore[misc]  # options are keywords


def test_every_schedule_method_has_the_one_signature():
    blocking = inspect.signature(ControllerClient.schedule)
    assert inspect.signature(ControllerSession.schedule) == blocking
    assert inspect.signature(AsyncControllerSession.schedule) == blocking
    names = list(blocking.parameters)
    assert names[:5] == ["self", "request_id", "total_tokens", "cached_tokens", "append_tokens"]
    assert blocking.parameters["wait_for_capacity_s"].kind is inspect.Parameter.KEYWORD_ONLY
    futures = inspect.signature(ControllerSession.schedule_async)
    assert list(futures.parameters) == [n for n in names if n != "wait_for_capacity_s"]
    sessions = inspect.signature(ControllerSession)
    assert sessions == inspect.signature(AsyncControllerSession)
    assert next(iter(sessions.parameters)) == "target"


@pytest.mark.parametrize(
    ("option", "value"),
    [("streams", 0), ("max_batch", 0), ("max_batch", 1025), ("release_linger_s", 1.5)],
)
def test_session_options_out_of_range_are_refused(option: str, value: float):
    with pytest.raises(ValueError, match=option):
        SessionConfig("127.0.0.1:1", **{option: value})  # type: ignore[arg-type]


# ----- the retry policy -----


def test_busy_and_down_are_retried_with_doubling_backoff(clock: FakeClock):
    call = Script(BUSY, DOWN, BUSY)
    assert retry_while_busy(call, wait_for_capacity_s=10) == "ok"
    assert call.calls == 4
    assert clock.sleeps == [0.01, 0.02, 0.04]


def test_backoff_is_capped_and_the_budget_ends_the_retries(clock: FakeClock):
    call = Script(*[BUSY] * 100)
    with pytest.raises(grpc.RpcError) as raised:
        retry_while_busy(call, wait_for_capacity_s=3)
    assert raised.value.code() is BUSY
    assert max(clock.sleeps) == MAX_BACKOFF_S
    assert sum(clock.sleeps) <= 3  # no try starts past the budget
    assert call.calls == len(clock.sleeps) + 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND])
def test_other_errors_and_a_zero_budget_raise_at_once(clock: FakeClock, code: grpc.StatusCode):
    with pytest.raises(grpc.RpcError) as raised:
        retry_while_busy(Script(code), wait_for_capacity_s=10)
    assert raised.value.code() is code
    with pytest.raises(grpc.RpcError):
        retry_while_busy(Script(BUSY), wait_for_capacity_s=0)
    assert clock.sleeps == []


async def test_the_async_form_retries_the_same_way(clock: FakeClock):
    call = Script(BUSY, DOWN, BUSY)
    assert await retry_while_busy_async(call.coroutine, wait_for_capacity_s=10) == "ok"
    assert clock.sleeps == [0.01, 0.02, 0.04]
    with pytest.raises(grpc.RpcError):
        await retry_while_busy_async(Script(grpc.StatusCode.INTERNAL).coroutine, 10)


async def test_finish_or_missing_in_both_forms():
    missing = grpc.StatusCode.NOT_FOUND
    assert finish_or_missing(Script(), missing_ok=False) is True
    assert finish_or_missing(Script(missing), missing_ok=True) is False
    with pytest.raises(grpc.RpcError):
        finish_or_missing(Script(missing), missing_ok=False)
    with pytest.raises(grpc.RpcError):
        finish_or_missing(Script(DOWN), missing_ok=True)
    assert await finish_or_missing_async(Script().coroutine(), missing_ok=False) is True
    assert await finish_or_missing_async(Script(missing).coroutine(), missing_ok=True) is False
    with pytest.raises(grpc.RpcError):
        await finish_or_missing_async(Script(missing).coroutine(), missing_ok=False)


# ----- the blocking calls both blocking clients inherit -----


class FakeClient(BlockingCalls):
    def __init__(self, schedule_fails: list[grpc.StatusCode]) -> None:
        self.script = Script(*schedule_fails)
        self.sent: list[object] = []

    def _schedule_once(self, message: pb.ScheduleRequest) -> pb.ScheduleResponse:
        self.sent.append(message)
        self.script()
        return pb.ScheduleResponse(assignment=pb.Assignment(request_id=message.request_id))

    def _complete_once(self, request_id: str) -> object:
        self.sent.append(("complete", request_id))
        raise error(grpc.StatusCode.NOT_FOUND)

    def _cancel_once(self, request_id: str, reason: str) -> object:
        self.sent.append(("cancel", request_id, reason))
        return None

    def _progress_once(self, request_id: str, prefill_done: bool) -> object:
        self.sent.append(("progress", request_id, prefill_done))
        return None


def test_blocking_schedule_sends_one_message_per_try(clock: FakeClock):
    client = FakeClient([BUSY])
    reply = client.schedule("r1", 100, 90, 10, session_id="s", wait_for_capacity_s=1)
    assert reply.assignment.request_id == "r1"
    assert client.sent == [ScheduleArgs("r1", 100, 90, 10, session_id="s").message()] * 2
    with pytest.raises(grpc.RpcError):
        FakeClient([BUSY]).schedule("r2", 100, 90, 10)  # no wait: no retry


def test_blocking_releases_map_not_found():
    client = FakeClient([])
    assert client.complete("r1", missing_ok=True) is False
    with pytest.raises(grpc.RpcError):
        client.complete("r1")
    assert client.cancel("r2", "gone") is True
    assert client.sent[-1] == ("cancel", "r2", "gone")
