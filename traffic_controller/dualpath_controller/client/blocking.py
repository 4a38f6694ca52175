"""The blocking schedule / complete / cancel, written once for both blocking clients
(ControllerClient over unary calls, ControllerSession over Session streams): same
arguments, same retries, same grpc.RpcError codes, so a frontend switches between them by
changing the constructor."""

from __future__ import annotations

from abc import ABC, abstractmethod

from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.client.requests import ScheduleCall, taking
from dualpath_controller.client.retry import finish_or_missing, retry_while_busy


class BlockingCalls(ABC):
    """Subclasses send one operation and wait for its answer; this adds the policy."""

    @abstractmethod
    def _schedule_once(self, message: pb.ScheduleRequest) -> pb.ScheduleResponse: ...

    @abstractmethod
    def _complete_once(self, request_id: str) -> object: ...

    @abstractmethod
    def _cancel_once(self, request_id: str, reason: str) -> object: ...

    @abstractmethod
    def _progress_once(self, request_id: str, prefill_done: bool) -> object: ...

    @taking(ScheduleCall)
    def schedule(self, call: ScheduleCall) -> pb.ScheduleResponse:
        """Schedule; on RESOURCE_EXHAUSTED / UNAVAILABLE retry (idempotent) with backoff for
        up to `wait_for_capacity_s` seconds, then raise the last error."""
        message = call.message()
        return retry_while_busy(lambda: self._schedule_once(message), call.wait_for_capacity_s)

    def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        """Release a request. With missing_ok, NOT_FOUND (e.g. after a controller restart)
        returns False instead of raising."""
        return finish_or_missing(lambda: self._complete_once(request_id), missing_ok)

    def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return finish_or_missing(lambda: self._cancel_once(request_id, reason), missing_ok)

    def read_done(self, request_id: str, *, missing_ok: bool = True) -> bool:
        """The request's cached KV is read: its booked read leaves the read queues."""
        return finish_or_missing(lambda: self._progress_once(request_id, False), missing_ok)

    def prefill_done(self, request_id: str, *, missing_ok: bool = True) -> bool:
        """The request's prefill is done (and its read): the PE's booked load is released."""
        return finish_or_missing(lambda: self._progress_once(request_id, True), missing_ok)
