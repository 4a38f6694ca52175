"""SessionOperationError: how a Session operation (or its stream) failed, shaped like the
error of a unary call so callers handle both the same way."""

from __future__ import annotations

import asyncio

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb

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

    @classmethod
    def deadline(cls, timeout_s: float) -> SessionOperationError:
        """No answer within a session's timeout_s (the answer is ignored if it comes later)."""
        return cls(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no answer on the session stream within {timeout_s}s",
        )

    @classmethod
    def closed(cls) -> SessionOperationError:
        return cls(grpc.StatusCode.CANCELLED, "session is closed")
