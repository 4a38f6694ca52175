"""The ext_proc servicer: one bidi stream per HTTP request (protocol.py says what the
endpoint picker protocol asks of it).

    request_headers  -> remember path, headers, subset hint; CONTINUE (asking for the
                        body with mode_override when the filter would not send it); a
                        request without a body goes to any ready candidate
    request_body     -> collect; at end_of_stream decide (decision.py): destination
                        header + envoy.lb metadata + rewritten body, or an
                        ImmediateResponse (400/404/413/429/503)
    response_headers -> the engine answered: PrefillDone (not awaited)
    response_body    -> passed on; at end_of_stream Complete at the controller
    stream end       -> Complete if the answer started (response_body_mode NONE sends no
                        body), else Cancel: nothing stays booked

Per-stream state is the typed `StreamState`, never shared between streams.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

from dualpath_router.picker import metrics as outcomes
from dualpath_router.picker import protocol
from dualpath_router.picker.decision import Decider, Pick, PickError, PickRequest
from dualpath_router.picker.endpoints import engine_endpoint
from dualpath_router.picker.metrics import PickerMetrics

log = logging.getLogger("dualpath.picker.extproc")

Responses = list[ext.ProcessingResponse]


@dataclass
class StreamState:
    """One HTTP request's ext_proc stream."""

    stream_id: str
    opened: float
    # Body modes the filter announced (protocol_config, first message); 0 = NONE/unknown.
    request_body_mode: int = 0
    response_body_mode: int = 0
    path: str = ""
    method: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    subset: tuple[str, ...] | None = None
    body: bytearray = field(default_factory=bytearray)
    pick: Pick | None = None
    # The answer started (response headers seen), and its HTTP status.
    response_started: bool = False
    response_status: int = 0
    released: bool = False
    # An ImmediateResponse was sent: the data plane answers the client, nothing follows.
    done: bool = False

    @property
    def full_duplex_request(self) -> bool:
        return self.request_body_mode == protocol.FULL_DUPLEX

    @property
    def full_duplex_response(self) -> bool:
        return self.response_body_mode == protocol.FULL_DUPLEX


class ExternalProcessor(ext_grpc.ExternalProcessorServicer):
    def __init__(self, decider: Decider, metrics: PickerMetrics) -> None:
        self.decider = decider
        self.metrics = metrics

    async def Process(
        self,
        request_iterator: AsyncIterator[ext.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ext.ProcessingResponse]:
        state = StreamState(uuid.uuid4().hex[:16], time.monotonic())
        self.metrics.streams.inc()
        try:
            async for message in request_iterator:
                for response in await self.handle(state, message):
                    yield response
                if state.done:
                    return
        finally:
            self.metrics.streams.dec()
            self._stream_ended(state)

    # ----- one message -------------------------------------------------------------------
    async def handle(self, state: StreamState, message: ext.ProcessingRequest) -> Responses:
        if message.HasField("protocol_config"):
            state.request_body_mode = message.protocol_config.request_body_mode
            state.response_body_mode = message.protocol_config.response_body_mode
        try:
            subset = protocol.subset_hint(message)
        except protocol.ProtocolError as exc:
            return self._refuse(state, PickError(400, str(exc), outcomes.INVALID))
        if subset is not None:
            state.subset = subset
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(state, message.request_headers)
        if kind == "request_body":
            return await self._request_body(state, message.request_body)
        if kind == "request_trailers":
            return [protocol.continue_trailers(request_side=True)]
        if kind == "response_headers":
            return self._response_headers(state, message)
        if kind == "response_body":
            return self._response_body(state, message.response_body)
        if kind == "response_trailers":
            self._release(state, outcomes.ANSWERED)
            return [protocol.continue_trailers(request_side=False)]
        return []

    def _request_headers(self, state: StreamState, headers: ext.HttpHeaders) -> Responses:
        state.headers = protocol.all_headers(headers)
        state.path = state.headers.get(":path", "")
        state.method = state.headers.get(":method", "")
        if headers.end_of_stream:  # no body (GET /v1/models): any ready engine, not booked
            try:
                spec = self.decider.any_ready(state.subset)
            except PickError as error:
                return self._refuse(state, error)
            endpoint = protocol.Destination(
                engine_endpoint(spec), None, (("x-dualpath-prefill-engine", spec.id),)
            )
            self._count(state, outcomes.NO_BODY)
            return [protocol.headers_destination(endpoint)]
        if state.full_duplex_request:
            return []  # answered with the destination once the body is in
        # Only BUFFERED and FULL_DUPLEX_STREAMED bring the whole body before the answer.
        return [
            protocol.continue_headers(ask_for_body=state.request_body_mode != protocol.BUFFERED)
        ]

    async def _request_body(self, state: StreamState, chunk: ext.HttpBody) -> Responses:
        state.body += chunk.body
        limit = self.decider.config.max_body_bytes
        if len(state.body) > limit:
            return self._refuse(
                state,
                PickError(
                    413, f"request body is over the limit of {limit} bytes", outcomes.INVALID
                ),
            )
        if not chunk.end_of_stream:
            if state.full_duplex_request:
                return []  # collected; answered at the last chunk
            return self._refuse(
                state,
                PickError(
                    500,
                    "the gateway streams the request body chunk by chunk: configure the ext_proc"
                    " filter's request_body_mode BUFFERED or FULL_DUPLEX_STREAMED",
                    outcomes.ERROR,
                ),
            )
        started = time.monotonic()
        try:
            pick = await self.decider.decide(
                PickRequest(state.path, state.headers, bytes(state.body), state.subset)
            )
        except PickError as error:
            self.metrics.decision_seconds.labels(error.outcome).observe(time.monotonic() - started)
            return self._refuse(state, error)
        except Exception as exc:  # a bug: answered, logged, never a hung request
            log.exception("endpoint pick failed", extra={"stream": state.stream_id})
            return self._refuse(
                state,
                PickError(500, f"picker error: {type(exc).__name__}: {exc}", outcomes.ERROR),
            )
        state.pick = pick
        self.metrics.decision_seconds.labels(outcomes.PICKED).observe(time.monotonic() - started)
        self._count(state, outcomes.PICKED)
        destination = protocol.Destination(
            pick.endpoint,
            pick.body,
            (
                ("x-dualpath-request-id", pick.request_id),
                ("x-dualpath-prefill-engine", pick.engine.id),
                ("x-dualpath-read-path", pick.route.read_path),
            ),
        )
        if state.full_duplex_request:
            return [protocol.headers_destination(destination), protocol.streamed_body(pick.body)]
        return [protocol.buffered_destination(destination)]

    def _response_headers(self, state: StreamState, message: ext.ProcessingRequest) -> Responses:
        headers = message.response_headers
        state.response_started = True
        status = protocol.header_value(headers, ":status")
        state.response_status = int(status) if status.isdigit() else 0
        served = protocol.served_endpoint(message)
        pick = state.pick
        if pick is not None:
            if served and served != pick.endpoint:
                log.warning(
                    "the gateway sent the request to another endpoint than picked",
                    extra={
                        "request_id": pick.request_id,
                        "picked": pick.endpoint,
                        "served": served,
                    },
                )
            if state.response_status < 400:
                self.decider.prefill_done(pick)
        if headers.end_of_stream:
            self._release(state, outcomes.ANSWERED)
        return [protocol.continue_response_headers()]

    def _response_body(self, state: StreamState, chunk: ext.HttpBody) -> Responses:
        if chunk.end_of_stream or chunk.end_of_stream_without_message:
            self._release(state, outcomes.ANSWERED)
        return [protocol.continue_response_body(chunk, state.full_duplex_response)]

    # ----- endings -----------------------------------------------------------------------
    def _refuse(self, state: StreamState, error: PickError) -> Responses:
        state.done = True
        self._count(state, error.outcome, error.message, error.status)
        return [protocol.immediate(error.status, error.body())]

    def _release(self, state: StreamState, reason: str) -> None:
        """Once per stream; `reason` is ANSWERED or why the request is cancelled."""
        pick = state.pick
        if pick is None or state.released:
            return
        state.released = True
        detail = ""
        if reason == outcomes.ANSWERED and state.response_status >= 500:
            reason, detail = outcomes.ENGINE_ERROR, f"engine answered HTTP {state.response_status}"
        self.decider.release(pick, reason, detail)
        log.info(
            "request released",
            extra={
                "request_id": pick.request_id,
                "stream": state.stream_id,
                "engine": pick.engine.id,
                "released_as": "complete" if reason == outcomes.ANSWERED else "cancel",
                "reason": reason,
                "detail": detail,
                "status": state.response_status,
                "latency_s": round(time.monotonic() - state.opened, 6),
            },
        )

    def _stream_ended(self, state: StreamState) -> None:
        if state.response_started:
            self._release(state, outcomes.ANSWERED)  # no response body was sent to the picker
        else:
            self._release(state, outcomes.STREAM_ENDED)

    def _count(
        self, state: StreamState, outcome: str, problem: str = "", status: int = 200
    ) -> None:
        self.metrics.decisions.labels(outcome).inc()
        pick = state.pick
        log.info(
            "endpoint picked"
            if outcome in (outcomes.PICKED, outcomes.NO_BODY)
            else "request refused",
            extra={
                "stream": state.stream_id,
                "outcome": outcome,
                "status": status,
                "problem": problem,
                "path": state.path,
                "subset": list(state.subset) if state.subset is not None else None,
                "request_id": pick.request_id if pick else "",
                "endpoint": pick.endpoint if pick else "",
                "engine": pick.engine.id if pick else "",
                "read_path": pick.route.read_path if pick else "",
                "prompt_tokens": pick.prompt_tokens if pick else 0,
                "cached_tokens": pick.cached_tokens if pick else 0,
            },
        )
