"""ControllerSession: Schedule / Complete / Cancel pipelined over Session streams, for
threaded callers (the demo driver, the bench), with `*_async` variants returning
concurrent.futures.Future."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, TypeVar

from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.client.blocking import BlockingCalls
from dualpath_controller.client.core import SessionBase, SessionConfig, SessionCore
from dualpath_controller.client.errors import SessionOperationError
from dualpath_controller.client.requests import ScheduleArgs, taking

R = TypeVar("R")


class _OperationFuture(Future):  # type: ignore[type-arg]
    """A Future that knows its correlation id, so a timed-out wait can forget it."""

    def __init__(self, correlation_id: int) -> None:
        super().__init__()
        self.correlation_id = correlation_id


class ControllerSession(SessionBase, BlockingCalls):
    """Schedule / Complete / Cancel pipelined over Session streams, for threaded callers.

    Thread-safe: any number of threads may call it; each operation gets a correlation id and
    a concurrent.futures.Future (its callbacks run on the session's event-loop thread: keep
    them short). The streams run on grpc.aio in one event-loop thread per session; other
    threads hand operations over in bursts (one loop wake-up per burst). `streams` > 1
    spreads operations round-robin over several streams (one is enough for most frontends).
    Complete/Cancel wait up to `release_linger_s` (2 ms) for a Schedule to share a message
    with. A stream that ends (controller restart, network) fails its unanswered operations
    with the status it ended with and is replaced on the next call. Blocking methods are
    ControllerClient's (BlockingCalls: same arguments, same grpc.RpcError codes), so a
    frontend can switch by changing the constructor. Asyncio frontends can use
    `AsyncControllerSession`. Constructor arguments: SessionConfig's.
    """

    @taking(SessionConfig)
    def __init__(self, config: SessionConfig) -> None:
        super().__init__(config)
        # Operations handed over by other threads, moved to the streams by _flush on the loop.
        self._outbox: list[tuple[pb.SessionRequest, _OperationFuture]] = []
        self._outbox_lock = threading.Lock()
        self._flush_scheduled = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="controller-session", daemon=True
        )
        self._thread.start()

        async def make_core() -> SessionCore:
            return SessionCore(config)

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

    @taking(ScheduleArgs)
    def schedule_async(self, args: ScheduleArgs) -> Future[pb.ScheduleResponse]:
        return self.submit(schedule=args.message())

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
                raise SessionOperationError.closed()
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
            raise SessionOperationError.deadline(self.timeout_s) from None

    def _schedule_once(self, message: pb.ScheduleRequest) -> pb.ScheduleResponse:
        return self.wait(self.submit(schedule=message))

    def _complete_once(self, request_id: str) -> object:
        return self.wait(self.complete_async(request_id))

    def _cancel_once(self, request_id: str, reason: str) -> object:
        return self.wait(self.cancel_async(request_id, reason))

    def _progress_once(self, request_id: str, prefill_done: bool) -> object:
        if prefill_done:
            return self.wait(self.submit(prefill_done=pb.PrefillDoneRequest(request_id=request_id)))
        return self.wait(self.submit(read_done=pb.ReadDoneRequest(request_id=request_id)))

    # ----- shutdown -----

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
