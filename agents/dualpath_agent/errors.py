"""The agent's errors and the gRPC status each one becomes (status_of), and the read paths'
labels in metrics and logs."""

from __future__ import annotations

import grpc
from dualpath.v1 import traffic_controller_pb2

from dualpath_agent.blockfile import ChecksumMismatch
from dualpath_agent.buffer import Cancelled, OutOfBuffer
from dualpath_agent.core import ShuttingDown
from dualpath_agent.store import BlockCorrupt, BlockNotFound, LayoutMismatch, StoreError, StoreFull
from dualpath_agent.transport import TransferError, TransferRejected

PATH_LABEL = {
    traffic_controller_pb2.ReadPath.READ_PATH_PE_READ: "pe_read",
    traffic_controller_pb2.ReadPath.READ_PATH_DE_READ: "de_read",
    traffic_controller_pb2.ReadPath.READ_PATH_SPLIT: "split",
}


class AgentError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerFailed(Exception):
    """A call to a peer agent failed; keeps the peer's status code."""

    def __init__(self, endpoint: str, exc: grpc.RpcError) -> None:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
        ):
            self.code = grpc.StatusCode.UNAVAILABLE
            message = f"peer agent {endpoint} failed mid-transfer ({code.name}): {details}"
        else:
            self.code = code
            message = f"peer agent {endpoint}: {details}"
        super().__init__(message)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception to the gRPC status a client sees."""
    table: list[tuple[type[BaseException], grpc.StatusCode]] = [
        (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
        (BlockNotFound, grpc.StatusCode.NOT_FOUND),
        (BlockCorrupt, grpc.StatusCode.DATA_LOSS),
        (ChecksumMismatch, grpc.StatusCode.DATA_LOSS),
        (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (OutOfBuffer, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (LayoutMismatch, grpc.StatusCode.FAILED_PRECONDITION),
        (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
        (TransferRejected, grpc.StatusCode.INVALID_ARGUMENT),
        (TransferError, grpc.StatusCode.UNAVAILABLE),
        (Cancelled, grpc.StatusCode.CANCELLED),
        (StoreError, grpc.StatusCode.INTERNAL),
    ]
    if isinstance(exc, AgentError | PeerFailed):
        return exc.code, str(exc)
    for kind, code in table:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
