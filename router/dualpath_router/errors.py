"""The router's one error type, answered as an OpenAI-style error JSON.

`{"error": {"message": ..., "type": ..., "param": ..., "code": <HTTP status>}}`: `param`
names the offending request field when there is one, and the message always says what was
wrong and where (a field, an engine, the traffic controller).
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"
UNAVAILABLE = "service_unavailable"


class RouterError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str | None = None,
        outcome: str = "invalid",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or (INVALID_REQUEST if status < 500 else UNAVAILABLE)
        # Label of the router's request counter ("invalid", "controller_error", ...).
        self.outcome = outcome
        # An engine's own 4xx answer, passed through to the client as it was.
        self.upstream_body: bytes | None = None
        self.upstream_media_type: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, f"{param}: {message}" if param else message, param=param)
