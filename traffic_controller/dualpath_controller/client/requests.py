"""What the client sends: the Schedule request's arguments, an engine's load, and the
decorator that gives every schedule method the same keyword signature.

The schedule signature (request id, token counts, then keyword options) is written once,
as the ScheduleArgs dataclass; each schedule method takes a ScheduleArgs (or ScheduleCall,
which adds the client-side capacity wait) and `taking` turns it into a method callers call
with the plain arguments, so the five methods cannot drift apart."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Concatenate, ParamSpec, TypeVar

from dualpath.v1 import traffic_controller_pb2 as pb

P = ParamSpec("P")
A = TypeVar("A")
S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class ScheduleArgs:
    """One Schedule request, as the controller receives it."""

    request_id: str
    total_tokens: int
    cached_tokens: int
    append_tokens: int
    _: KW_ONLY
    expected_output_tokens: int = 0
    kv_bytes_per_token: int = 0
    session_id: str = ""
    # Prefill engines (ids) the request may go to; empty = any (ScheduleRequest field).
    prefill_candidates: tuple[str, ...] = ()

    def message(self) -> pb.ScheduleRequest:
        return pb.ScheduleRequest(
            request_id=self.request_id,
            total_tokens=self.total_tokens,
            cached_tokens=self.cached_tokens,
            append_tokens=self.append_tokens,
            expected_output_tokens=self.expected_output_tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
            session_id=self.session_id,
            prefill_candidates=self.prefill_candidates,
        )


@dataclass(frozen=True, kw_only=True)
class ScheduleCall(ScheduleArgs):
    """A blocking (or awaited) schedule: the request, and how long the client retries
    RESOURCE_EXHAUSTED / UNAVAILABLE before raising (0: no retry)."""

    wait_for_capacity_s: float = 0.0


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

    def report(self, engine_id: str, report_seq: int) -> pb.LoadReport:
        return pb.LoadReport(engine_id=engine_id, report_seq=report_seq, **vars(self))


def taking(
    build: Callable[P, A],
) -> Callable[[Callable[[S, A], R]], Callable[Concatenate[S, P], R]]:
    """Decorate a method `(self, built: A)` so that callers pass `build`'s arguments
    instead (positional and keyword, type-checked against `build`'s signature)."""

    def decorate(method: Callable[[S, A], R]) -> Callable[Concatenate[S, P], R]:
        @functools.wraps(method)
        def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return method(self, build(*args, **kwargs))

        # help() and inspect show the arguments callers actually pass.
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        parameters = [self_parameter, *inspect.signature(build).parameters.values()]
        wrapper.__signature__ = inspect.signature(method).replace(  # type: ignore[attr-defined]
            parameters=parameters
        )
        return wrapper

    return decorate
