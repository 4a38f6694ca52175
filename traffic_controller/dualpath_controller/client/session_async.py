"""AsyncControllerSession: Schedule / Complete / Cancel over Session streams, for asyncio
frontends (the router)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar

from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.client.core import SessionBase, SessionConfig, SessionCore
from dualpath_controller.client.errors import SessionOperationError
from dualpath_controller.client.requests import ScheduleCall, taking
from dualpath_controller.client.retry import finish_or_missing_async, retry_while_busy_async

R = TypeVar("R")


class AsyncControllerSession(SessionBase):
    """Schedule / Complete / Cancel over Session streams, for asyncio frontends: create,
    use and close it on one running event loop (no thread hand-offs). `submit` and the
    `*_nowait` methods return asyncio futures, so many operations can be in flight; the
    coroutines wait for one, with timeout_s, and raise grpc.RpcError (SessionOperationError)
    like the unary calls. Same streams, batching and release linger as ControllerSession.
    Constructor arguments: SessionConfig's."""

    @taking(SessionConfig)
    def __init__(self, config: SessionConfig) -> None:
        super().__init__(config)
        self._core = SessionCore(config)
        self._loop = asyncio.get_running_loop()

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
            raise SessionOperationError.closed()
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
            raise SessionOperationError.deadline(self.timeout_s) from None

    @taking(ScheduleCall)
    async def schedule(self, call: ScheduleCall) -> pb.ScheduleResponse:
        """Like ControllerClient.schedule (retries RESOURCE_EXHAUSTED / UNAVAILABLE for up
        to wait_for_capacity_s)."""
        message = call.message()
        return await retry_while_busy_async(
            lambda: self.wait(self.schedule_nowait(message)), call.wait_for_capacity_s
        )

    async def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        return await finish_or_missing_async(
            self.wait(self.complete_nowait(request_id)), missing_ok
        )

    async def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return await finish_or_missing_async(
            self.wait(self.cancel_nowait(request_id, reason)), missing_ok
        )

    def prefill_done_nowait(self, request_id: str) -> asyncio.Future[Any]:
        return self.submit(prefill_done=pb.PrefillDoneRequest(request_id=request_id))

    async def prefill_done(self, request_id: str, *, missing_ok: bool = True) -> bool:
        """The request's prefill (and read) is done: the PE's booked load is released."""
        return await finish_or_missing_async(
            self.wait(self.prefill_done_nowait(request_id)), missing_ok
        )

    async def read_done(self, request_id: str, *, missing_ok: bool = True) -> bool:
        message = pb.ReadDoneRequest(request_id=request_id)
        return await finish_or_missing_async(self.wait(self.submit(read_done=message)), missing_ok)

    async def close(self, *, cancel: bool = False, timeout_s: float = 10.0) -> None:
        """End the streams: gracefully (what was sent is answered first) or, with cancel,
        at once (unanswered operations fail with CANCELLED). Nothing is released on the
        controller either way."""
        if not self._closed:
            self._closed = True
            await self._core.close(cancel, timeout_s)
