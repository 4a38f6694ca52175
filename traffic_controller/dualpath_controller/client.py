"""Client helpers for components that talk to the traffic controller (demo, agents, bench).

- `ControllerClient`: blocking calls with keyword arguments instead of messages;
  `schedule(..., wait_for_capacity_s=...)` retries RESOURCE_EXHAUSTED with backoff so a
  request is delayed, never dropped.
- `ControllerSession`: the same schedule / complete / cancel (same arguments, same errors:
  a drop-in for a frontend's `ControllerClient`), pipelined over Session streams, plus
  `*_async` variants returning futures. Thread-safe; for high-rate frontends (about half the
  controller's CPU per request of the unary calls, measured in bench/bench_controller.py).
- `AsyncControllerSession`: the same for asyncio frontends (coroutines, asyncio futures).
- `EngineReporter`: a thread that registers an engine and reports its load periodically; it
  re-registers when the controller answers FAILED_PRECONDITION (a restarted controller
  rebuilds its state this way) and keeps retrying while the controller is unreachable.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common import tls

from dualpath_controller.convert import ROLE_TO_PROTO, parse_role
from dualpath_controller.policy import Role

log = logging.getLogger("dualpath.controller.client")
R = TypeVar("R")
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
# How long a Session Complete/Cancel may wait for a Schedule to share a message with. The
# controller's view of the engine is that much later to shrink: nothing next to decode
# times of seconds, and load reports correct it anyway.
RELEASE_LINGER_S = 0.002


@dataclass
class EngineLoad:
    """What an engine reports: seq_e, tok_e, free HBM, and its node's read queue."""

    unfinished_requests: int = 0
    unfinished_tokens: int = 0
    free_hbm_tokens: int = 0
    read_queue_length: int = 0
    read_queue_tokens: int = 0
    read_queue_bytes: int = 0
    snic_inflight_bytes: int = 0


class ControllerClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 5.0,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        """`identity`: mutual TLS with this identity directory (the controller is verified
        as pki.role_dns_name("controller")). `tls_ca`: server-only TLS trusting a CA file or
        a mounted TLS Secret directory. Neither: plaintext (the controller then must listen
        without TLS too)."""
        self.target = target
        self.timeout_s = timeout_s
        self._channels = tls.RenewingChannel(
            lambda: tls.channel(target, tls_ca, identity=identity, server_role="controller"),
            identity,
        )
        self._stub_of: tuple[grpc.Channel, pb_grpc.TrafficControllerStub] | None = None

    @property
    def channel(self) -> grpc.Channel:
        """The current channel (a new one after a certificate rotation, see tls.py)."""
        return self._channels.current()[0]

    @property
    def stub(self) -> pb_grpc.TrafficControllerStub:
        channel = self.channel
        if self._stub_of is None or self._stub_of[0] is not channel:
            self._stub_of = (channel, pb_grpc.TrafficControllerStub(channel))
        return self._stub_of[1]

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.all():
            channel.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def register_engine(
        self,
        engine_id: str,
        role: Role | str,
        node: str,
        *,
        group: str = "",
        hbm_capacity_tokens: int = 0,
        agent_endpoint: str = "",
        snic_read_bytes_per_s: float = 0.0,
    ) -> pb.RegisterEngineResponse:
        engine = pb.Engine(
            engine_id=engine_id,
            role=ROLE_TO_PROTO[parse_role(role)],
            node=node,
            group=group,
            hbm_capacity_tokens=hbm_capacity_tokens,
            agent_endpoint=agent_endpoint,
            snic_read_bytes_per_s=snic_read_bytes_per_s,
        )
        return self.register(engine)

    def register(self, engine: pb.Engine) -> pb.RegisterEngineResponse:
        return self.stub.RegisterEngine(
            pb.RegisterEngineRequest(engine=engine), timeout=self.timeout_s
        )

    def deregister_engine(self, engine_id: str) -> None:
        self.stub.DeregisterEngine(
            pb.DeregisterEngineRequest(engine_id=engine_id), timeout=self.timeout_s
        )

    def report_load(self, engine_id: str, report_seq: int, load: EngineLoad) -> bool:
        """Send one report; returns False when the controller found it stale."""
        report = pb.LoadReport(engine_id=engine_id, report_seq=report_seq, **vars(load))
        return self.stub.ReportLoad(report, timeout=self.timeout_s).accepted

    def report_agent_failure(self, agent_endpoint: str, reason: str) -> list[str]:
        """Tell the controller an agent failed under us; returns the engines it drained."""
        reply = self.stub.ReportAgentFailure(
            pb.AgentFailureReport(agent_endpoint=agent_endpoint, reason=reason[:256]),
            timeout=self.timeout_s,
        )
        return list(reply.drained_engine_ids)

    def schedule(
        self,
        request_id: str,
        total_tokens: int,
        cached_tokens: int,
        append_tokens: int,
        *,
        expected_output_tokens: int = 0,
        kv_bytes_per_token: int = 0,
        session_id: str = "",
        wait_for_capacity_s: float = 0.0,
    ) -> pb.ScheduleResponse:
        """Schedule; on RESOURCE_EXHAUSTED retry (idempotent) with backoff for up to
        `wait_for_capacity_s` seconds, then raise the last error."""
        message = schedule_message(
            request_id,
            total_tokens,
            cached_tokens,
            append_tokens,
            expected_output_tokens=expected_output_tokens,
            kv_bytes_per_token=kv_bytes_per_token,
            session_id=session_id,
        )
        return retry_while_busy(
            lambda: self.stub.Schedule(message, timeout=self.timeout_s), wait_for_capacity_s
        )

    def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        """Release a request. With missing_ok, NOT_FOUND (e.g. after a controller restart)
        returns False instead of raising."""
        return self._finish(
            lambda: self.stub.Complete(
                pb.CompleteRequest(request_id=request_id), timeout=self.timeout_s
            ),
            missing_ok,
        )

    def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return self._finish(
            lambda: self.stub.Cancel(
                pb.CancelRequest(request_id=request_id, reason=reason), timeout=self.timeout_s
            ),
            missing_ok,
        )

    @staticmethod
    def _finish(call: Callable[[], object], missing_ok: bool) -> bool:
        return finish_or_missing(call, missing_ok)

    def status(self) -> pb.ClusterStatus:
        return self.stub.GetStatus(pb.StatusRequest(), timeout=self.timeout_s)


def schedule_message(
    request_id: str,
    total_tokens: int,
    cached_tokens: int,
    append_tokens: int,
    *,
    expected_output_tokens: int = 0,
    kv_bytes_per_token: int = 0,
    session_id: str = "",
) -> pb.ScheduleRequest:
    return pb.ScheduleRequest(
        request_id=request_id,
        total_tokens=total_tokens,
        cached_tokens=cached_tokens,
        append_tokens=append_tokens,
        expected_output_tokens=expected_output_tokens,
        kv_bytes_per_token=kv_bytes_per_token,
        session_id=session_id,
    )


def retry_while_busy(call: Callable[[], R], wait_for_capacity_s: float) -> R:
    """Run an idempotent call; on RESOURCE_EXHAUSTED / UNAVAILABLE retry with backoff for up
    to `wait_for_capacity_s` seconds, then raise the last error."""
    deadline = time.monotonic() + wait_for_capacity_s
    backoff = 0.01
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or time.monotonic() + backoff > deadline:
                raise
        time.sleep(backoff)
        backoff = min(backoff * 2, 0.5)


def finish_or_missing(call: Callable[[], object], missing_ok: bool) -> bool:
    """Complete/Cancel: True when released; with missing_ok, NOT_FOUND returns False."""
    try:
        call()
    except grpc.RpcError as exc:
        if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


# ----- Session streams -----

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_CORE_WRITE_FAILURE = "Internal error from Core"  # grpc.aio's details for a failed write


class SessionOperationError(grpc.RpcError):
    """One Session operation failed (or its stream did). Has code() and details() like the
    error of a unary call, so callers handle both the same way."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    @classmethod
    def from_proto(cls, error: pb.OperationError) -> SessionOperationError:
        return cls(_STATUS_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN), error.message)

    @classmethod
    def from_call(cls, exc: BaseException) -> SessionOperationError:
        """The status a Session call ended with (AioRpcError, cancellation, ...)."""
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            if exc.code() is grpc.StatusCode.INTERNAL and details == _CORE_WRITE_FAILURE:
                # grpc.aio overwrites the status a stream ended with by this one when a
                # write was in flight as it ended (grpc/grpc#36066): the stream is gone,
                # nothing failed inside the controller, so retrying is right.
                return cls(
                    grpc.StatusCode.UNAVAILABLE,
                    "session stream ended during a write (controller gone or restarting)",
                )
            return cls(exc.code(), f"session stream ended: {details}")
        if isinstance(exc, asyncio.CancelledError):
            return cls(grpc.StatusCode.CANCELLED, "session stream cancelled")
        return cls(grpc.StatusCode.UNAVAILABLE, f"session stream ended: {exc!r}")


class _Settable(Protocol):
    """What a Session stream resolves: an asyncio.Future or a concurrent.futures.Future."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


def _resolve(future: _Settable, answer: pb.SessionResponse) -> None:
    if future.done():  # its caller gave up (timeout, cancellation)
        return
    kind = answer.WhichOneof("result")
    if kind == "error":
        future.set_exception(SessionOperationError.from_proto(answer.error))
    elif kind is None:
        future.set_exception(
            SessionOperationError(grpc.StatusCode.UNKNOWN, "answer without a result")
        )
    else:
        future.set_result(getattr(answer, kind))


def _fail(futures: Iterable[_Settable], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class _SessionStream:
    """One Session call, driven by two tasks on an event loop (only that loop's thread
    touches it). The writer sends everything queued since its last write as one message
    (while a write is in flight, new operations pile up: a busy client coalesces without
    waiting to fill a batch); the reader resolves each answer's future by correlation id.
    Releases (Complete, Cancel) are not urgent: they wait up to `release_linger_s` for the
    next Schedule to ride along with (a message costs ~100 us of CPU on each side, whatever
    it holds). When the call ends, every unanswered future fails with the status it ended
    with: the caller may retry (Schedule is idempotent, Complete/Cancel are repeatable)."""

    def __init__(self, stub: Any, max_batch: int, slot: int, release_linger_s: float) -> None:
        self.max_batch = max_batch
        self.release_linger_s = release_linger_s
        self._linger: asyncio.TimerHandle | None = None
        self.call = stub.Session()
        self.queued: list[tuple[pb.SessionRequest, _Settable]] = []
        self.pending: dict[int, _Settable] = {}
        self.ended = False
        self.ending = False  # no more writes: done_writing() once the queue is sent
        self.messages_sent = 0
        self.operations_sent = 0
        self._wake = asyncio.Event()
        self._tasks = (
            asyncio.create_task(self._write(), name=f"session-{slot}-writer"),
            asyncio.create_task(self._read(), name=f"session-{slot}-reader"),
        )

    def add(self, request: pb.SessionRequest, future: _Settable, urgent: bool = True) -> None:
        self.queued.append((request, future))
        if urgent or self.release_linger_s <= 0:
            self._wake.set()
        elif self._linger is None:  # flushed by the next urgent operation, or by then
            self._linger = asyncio.get_running_loop().call_later(
                self.release_linger_s, self._wake.set
            )

    def finish(self) -> None:
        """Graceful end: send what is queued, then half-close; the reader ends once the
        server has answered everything."""
        self.ending = True
        self._wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._linger is not None:
                    self._linger.cancel()
                    self._linger = None
                while self.queued:
                    chunk = self.queued[: self.max_batch]
                    del self.queued[: self.max_batch]
                    for request, future in chunk:
                        self.pending[request.correlation_id] = future
                    batch = pb.SessionRequestBatch()
                    batch.requests.extend(request for request, _ in chunk)
                    self.messages_sent += 1
                    self.operations_sent += len(chunk)
                    await self.call.write(batch)
                if self.ending or self.ended:
                    if not self.ended:
                        await self.call.done_writing()
                    return
        except Exception as exc:  # the call ended under us
            self._end(exc)

    async def _read(self) -> None:
        error: BaseException = SessionOperationError(
            grpc.StatusCode.UNAVAILABLE, "session stream ended before answering"
        )
        try:
            async for batch in self.call:
                pending = self.pending
                for answer in batch.responses:
                    future = pending.pop(answer.correlation_id, None)
                    if future is not None:
                        _resolve(future, answer)
        except BaseException as exc:  # every way out must fail the futures
            error = exc
            if not isinstance(exc, (grpc.RpcError, asyncio.CancelledError)):
                log.exception("session reader failed")
        self._end(error)

    def _end(self, exc: BaseException) -> None:
        if self.ended:
            return
        self.ended = True
        error = SessionOperationError.from_call(exc)
        _fail(self.pending.values(), error)
        _fail((future for _, future in self.queued), error)
        self.pending.clear()
        self.queued.clear()
        self.call.cancel()
        self._wake.set()

    def forget(self, correlation_id: int) -> None:
        self.pending.pop(correlation_id, None)

    def cancel(self) -> None:
        self.call.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _SessionCore:
    """Streams of one grpc.aio channel and the correlation ids: what both session classes
    share. Create and use it on one event loop."""

    def __init__(
        self,
        target: str,
        streams: int,
        max_batch: int,
        release_linger_s: float,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        if not 1 <= max_batch <= 1024:
            raise ValueError(f"max_batch must be in [1, 1024], got {max_batch}")
        if not 0 <= release_linger_s <= 1:
            raise ValueError(f"release_linger_s must be in [0, 1], got {release_linger_s}")
        self.max_batch = max_batch
        self.release_linger_s = release_linger_s
        # Binds to the running loop. A new stream after a certificate rotation opens on a
        # new channel (see tls.RenewingChannel); open streams keep theirs.
        self._channels = tls.RenewingChannel(
            lambda: tls.aio_channel(target, tls_ca, identity=identity, server_role="controller"),
            identity,
        )
        self.channel = self._channels.current()[0]
        self.stub = pb_grpc.TrafficControllerStub(self.channel)
        self.streams: list[_SessionStream | None] = [None] * streams
        self.next_id = itertools.count(1)  # next() is atomic under the GIL
        self.round_robin = 0
        self.streams_opened = 0
        self._messages_closed = 0  # counters of streams that ended
        self._operations_closed = 0

    def request(self, operation: dict[str, Any]) -> pb.SessionRequest:
        """A SessionRequest with a fresh correlation id (any thread)."""
        return pb.SessionRequest(correlation_id=next(self.next_id), **operation)

    def send(self, request: pb.SessionRequest, future: _Settable) -> None:
        self.round_robin = (self.round_robin + 1) % len(self.streams)
        urgent = request.HasField("schedule")  # releases may wait for a ride
        self.stream(self.round_robin).add(request, future, urgent)

    def stream(self, slot: int) -> _SessionStream:
        stream = self.streams[slot]
        if stream is None or stream.ended:
            if stream is not None:
                self._messages_closed += stream.messages_sent
                self._operations_closed += stream.operations_sent
            channel, renewed = self._channels.current()
            if renewed:
                self.channel, self.stub = channel, pb_grpc.TrafficControllerStub(channel)
            stream = _SessionStream(self.stub, self.max_batch, slot, self.release_linger_s)
            self.streams[slot] = stream
            self.streams_opened += 1
        return stream

    def connect(self) -> None:
        for slot in range(len(self.streams)):
            self.stream(slot)

    def forget(self, correlation_id: int) -> None:
        for stream in self.streams:
            if stream is not None:
                stream.forget(correlation_id)

    def batching(self) -> tuple[int, int]:
        live = [s for s in self.streams if s is not None]
        return (
            self._messages_closed + sum(s.messages_sent for s in live),
            self._operations_closed + sum(s.operations_sent for s in live),
        )

    async def close(self, cancel: bool, timeout_s: float) -> None:
        streams = [s for s in self.streams if s is not None]
        for stream in streams:
            stream.cancel() if cancel else stream.finish()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in streams)), timeout_s)
        except TimeoutError:
            for stream in streams:
                stream.cancel()
        for channel in self._channels.all():
            await channel.close(None)


class AsyncControllerSession:
    """Schedule / Complete / Cancel over Session streams, for asyncio frontends: create,
    use and close it on one running event loop (no thread hand-offs). `submit` and the
    `*_nowait` methods return asyncio futures, so many operations can be in flight; the
    coroutines wait for one, with timeout_s, and raise grpc.RpcError (SessionOperationError)
    like the unary calls. Same streams, batching and release linger as ControllerSession."""

    def __init__(
        self,
        target: str,
        *,
        streams: int = 1,
        timeout_s: float = 5.0,
        max_batch: int = 256,
        release_linger_s: float = RELEASE_LINGER_S,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._core = _SessionCore(target, streams, max_batch, release_linger_s, tls_ca, identity)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def __aenter__(self) -> AsyncControllerSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._core.channel.channel_ready(), timeout_s)

    def connect(self) -> None:
        """Open every stream now (they open on first use otherwise)."""
        self._core.connect()

    def submit(self, **operation: Any) -> asyncio.Future[Any]:
        """Send one operation (schedule=, complete= or cancel= message); the future gets the
        unary call's response message or raises SessionOperationError."""
        if self._closed:
            raise SessionOperationError(grpc.StatusCode.CANCELLED, "session is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._core.send(self._core.request(operation), future)
        return future

    def schedule_nowait(self, message: pb.ScheduleRequest) -> asyncio.Future[Any]:
        return self.submit(schedule=message)

    def complete_nowait(self, request_id: str) -> asyncio.Future[Any]:
        return self.submit(complete=pb.CompleteRequest(request_id=request_id))

    def cancel_nowait(self, request_id: str, reason: str = "") -> asyncio.Future[Any]:
        return self.submit(cancel=pb.CancelRequest(request_id=request_id, reason=reason))

    async def wait(self, future: asyncio.Future[R]) -> R:
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise SessionOperationError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the session stream within {self.timeout_s}s",
            ) from None

    async def schedule(
        self,
        request_id: str,
        total_tokens: int,
        cached_tokens: int,
        append_tokens: int,
        *,
        expected_output_tokens: int = 0,
        kv_bytes_per_token: int = 0,
        session_id: str = "",
        wait_for_capacity_s: float = 0.0,
    ) -> pb.ScheduleResponse:
        """Like ControllerClient.schedule (retries RESOURCE_EXHAUSTED / UNAVAILABLE for up
        to wait_for_capacity_s)."""
        message = schedule_message(
            request_id,
            total_tokens,
            cached_tokens,
            append_tokens,
            expected_output_tokens=expected_output_tokens,
            kv_bytes_per_token=kv_bytes_per_token,
            session_id=session_id,
        )
        deadline = time.monotonic() + wait_for_capacity_s
        backoff = 0.01
        while True:
            try:
                return await self.wait(self.schedule_nowait(message))
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() + backoff > deadline:
                    raise
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    async def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        return await _finish_or_missing_async(
            self.wait(self.complete_nowait(request_id)), missing_ok
        )

    async def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return await _finish_or_missing_async(
            self.wait(self.cancel_nowait(request_id, reason)), missing_ok
        )

    def batching(self) -> tuple[int, int]:
        """(messages sent, operations sent) so far, over all streams."""
        return self._core.batching()

    @property
    def streams_opened(self) -> int:
        return self._core.streams_opened

    async def close(self, *, cancel: bool = False, timeout_s: float = 10.0) -> None:
        """End the streams: gracefully (what was sent is answered first) or, with cancel,
        at once (unanswered operations fail with CANCELLED). Nothing is released on the
        controller either way."""
        if not self._closed:
            self._closed = True
            await self._core.close(cancel, timeout_s)


async def _finish_or_missing_async(call: Awaitable[object], missing_ok: bool) -> bool:
    try:
        await call
    except grpc.RpcError as exc:
        if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


class _OperationFuture(Future):  # type: ignore[type-arg]
    """A Future that knows its correlation id, so a timed-out wait can forget it."""

    def __init__(self, correlation_id: int) -> None:
        super().__init__()
        self.correlation_id = correlation_id


class ControllerSession:
    """Schedule / Complete / Cancel pipelined over Session streams, for threaded callers.

    Thread-safe: any number of threads may call it; each operation gets a correlation id and
    a concurrent.futures.Future (its callbacks run on the session's event-loop thread: keep
    them short). The streams run on grpc.aio in one event-loop thread per session; other
    threads hand operations over in bursts (one loop wake-up per burst). `streams` > 1
    spreads operations round-robin over several streams (one is enough for most frontends).
    Complete/Cancel wait up to `release_linger_s` (2 ms) for a Schedule to share a message
    with. A stream that ends (controller restart, network) fails its unanswered operations
    with the status it ended with and is replaced on the next call. Blocking methods mirror
    `ControllerClient`'s (same arguments, same grpc.RpcError codes), so a frontend can switch
    by changing the constructor. Asyncio frontends can use `AsyncControllerSession`.
    """

    def __init__(
        self,
        target: str,
        *,
        streams: int = 1,
        timeout_s: float = 5.0,
        max_batch: int = 256,
        release_linger_s: float = RELEASE_LINGER_S,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        # Operations handed over by other threads, moved to the streams by _flush on the loop.
        self._outbox: list[tuple[pb.SessionRequest, _OperationFuture]] = []
        self._outbox_lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="controller-session", daemon=True
        )
        self._thread.start()

        async def make_core() -> _SessionCore:
            return _SessionCore(target, streams, max_batch, release_linger_s, tls_ca, identity)

        try:
            self._core = self._on_loop(make_core())
        except BaseException:
            self._stop_loop(1.0)
            raise

    def _on_loop(self, coroutine: Coroutine[Any, Any, R], timeout_s: float | None = None) -> R:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def __enter__(self) -> ControllerSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        self._on_loop(asyncio.wait_for(self._core.channel.channel_ready(), timeout_s))

    def connect(self) -> None:
        """Open every stream now (they open on first use otherwise)."""

        async def connect() -> None:
            self._core.connect()

        self._on_loop(connect())

    # ----- futures -----

    def schedule_async(
        self,
        request_id: str,
        total_tokens: int,
        cached_tokens: int,
        append_tokens: int,
        *,
        expected_output_tokens: int = 0,
        kv_bytes_per_token: int = 0,
        session_id: str = "",
    ) -> Future[pb.ScheduleResponse]:
        message = schedule_message(
            request_id,
            total_tokens,
            cached_tokens,
            append_tokens,
            expected_output_tokens=expected_output_tokens,
            kv_bytes_per_token=kv_bytes_per_token,
            session_id=session_id,
        )
        return self.submit(schedule=message)

    def complete_async(self, request_id: str) -> Future[pb.CompleteResponse]:
        return self.submit(complete=pb.CompleteRequest(request_id=request_id))

    def cancel_async(self, request_id: str, reason: str = "") -> Future[pb.CancelResponse]:
        return self.submit(cancel=pb.CancelRequest(request_id=request_id, reason=reason))

    def submit(self, **operation: Any) -> Future[Any]:
        """Send one operation (schedule=, complete= or cancel= message); its Future gets the
        unary call's response message or raises SessionOperationError."""
        request = self._core.request(operation)
        future = _OperationFuture(request.correlation_id)
        with self._outbox_lock:
            if self._closed:
                raise SessionOperationError(grpc.StatusCode.CANCELLED, "session is closed")
            self._outbox.append((request, future))
            wake = not self._flush_scheduled
            self._flush_scheduled = True
        if wake:  # one wake-up of the loop per burst, not per operation
            self._loop.call_soon_threadsafe(self._flush)
        return future

    def _flush(self) -> None:
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
            self._flush_scheduled = False
        send = self._core.send
        for request, future in items:
            send(request, future)

    # ----- blocking, like ControllerClient -----

    def wait(self, future: Future[R]) -> R:
        """The future's result within timeout_s; DEADLINE_EXCEEDED (and the answer is
        ignored if it comes later) otherwise."""
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            if isinstance(future, _OperationFuture) and not self._closed:
                self._loop.call_soon_threadsafe(self._core.forget, future.correlation_id)
            raise SessionOperationError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer on the session stream within {self.timeout_s}s",
            ) from None

    def schedule(
        self,
        request_id: str,
        total_tokens: int,
        cached_tokens: int,
        append_tokens: int,
        *,
        expected_output_tokens: int = 0,
        kv_bytes_per_token: int = 0,
        session_id: str = "",
        wait_for_capacity_s: float = 0.0,
    ) -> pb.ScheduleResponse:
        """Like ControllerClient.schedule (retries RESOURCE_EXHAUSTED / UNAVAILABLE for up
        to wait_for_capacity_s)."""
        return retry_while_busy(
            lambda: self.wait(
                self.schedule_async(
                    request_id,
                    total_tokens,
                    cached_tokens,
                    append_tokens,
                    expected_output_tokens=expected_output_tokens,
                    kv_bytes_per_token=kv_bytes_per_token,
                    session_id=session_id,
                )
            ),
            wait_for_capacity_s,
        )

    def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        return finish_or_missing(lambda: self.wait(self.complete_async(request_id)), missing_ok)

    def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return finish_or_missing(
            lambda: self.wait(self.cancel_async(request_id, reason)), missing_ok
        )

    # ----- introspection and shutdown -----

    def batching(self) -> tuple[int, int]:
        """(messages sent, operations sent) so far, over all streams."""
        return self._core.batching()

    @property
    def streams_opened(self) -> int:
        return self._core.streams_opened

    def close(self, *, cancel: bool = False, timeout_s: float = 10.0) -> None:
        """End the streams: gracefully (what was sent is answered first) or, with cancel,
        at once (unanswered operations fail with CANCELLED). Nothing is released on the
        controller either way."""
        with self._outbox_lock:
            if self._closed:
                return
            self._closed = True

        async def shut() -> None:
            self._flush()
            await self._core.close(cancel, timeout_s)

        try:
            self._on_loop(shut(), timeout_s + 5)
        finally:
            self._stop_loop(timeout_s)

    def _stop_loop(self, timeout_s: float) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()


class EngineDown(Exception):
    """Raised by an EngineReporter's load function when the engine (or its node's agent)
    does not answer: no report is sent, so the controller drains the engine after its
    liveness timeout and takes it back with the next report."""


class EngineReporter:
    """Background registration + periodic load reports for one engine."""

    def __init__(
        self,
        client: ControllerClient,
        engine: pb.Engine,
        load: Callable[[], EngineLoad],
        *,
        interval_s: float | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.load = load
        self.interval_s = interval_s
        self.seq = 0
        self.registrations = 0
        self._stop = threading.Event()
        self._registered = False
        self._thread = threading.Thread(
            target=self._loop, name=f"reporter-{engine.engine_id}", daemon=True
        )

    def start(self) -> EngineReporter:
        self._thread.start()
        return self

    def stop(self, deregister: bool = False) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if deregister:
            try:
                self.client.deregister_engine(self.engine.engine_id)
            except grpc.RpcError as exc:
                log.warning("deregister failed", extra={"code": exc.code().name})

    def report_once(self) -> bool:
        """Register if needed, then send one report. Returns whether it was accepted."""
        if not self._registered:
            reply = self.client.register(self.engine)
            self._registered = True
            self.registrations += 1
            self.seq = 0  # a (re-)registered engine's sequence starts over
            if self.interval_s is None:
                self.interval_s = reply.report_interval_ms / 1000
        self.seq += 1
        try:
            return self.client.report_load(self.engine.engine_id, self.seq, self.load())
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self._registered = False  # controller restarted or forgot us: register again
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_once()
            except EngineDown as exc:
                log.debug("engine down: not reported", extra={"reason": str(exc)})
            except grpc.RpcError as exc:
                log.debug("report failed", extra={"code": exc.code().name})
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._registered = False  # it may come back empty: start over
            self._stop.wait(self.interval_s or 0.5)
