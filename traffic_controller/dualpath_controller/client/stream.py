"""SessionStream: one Session call (a bidirectional stream of batched operations) and how
its answers resolve the callers' futures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.client.errors import SessionOperationError

log = logging.getLogger("dualpath.controller.client")


class Settable(Protocol):
    """What a Session stream resolves: an asyncio.Future or a concurrent.futures.Future."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


def resolve(future: Settable, answer: pb.SessionResponse) -> None:
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


def fail_all(futures: Iterable[Settable], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class SessionStream:
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
        self.queued: list[tuple[pb.SessionRequest, Settable]] = []
        self.pending: dict[int, Settable] = {}
        self.ended = False
        self.ending = False  # no more writes: done_writing() once the queue is sent
        self.messages_sent = 0
        self.operations_sent = 0
        self._wake = asyncio.Event()
        self._tasks = (
            asyncio.create_task(self._write(), name=f"session-{slot}-writer"),
            asyncio.create_task(self._read(), name=f"session-{slot}-reader"),
        )

    def add(self, request: pb.SessionRequest, future: Settable, urgent: bool = True) -> None:
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
                        resolve(future, answer)
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
        fail_all(self.pending.values(), error)
        fail_all((future for _, future in self.queued), error)
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
