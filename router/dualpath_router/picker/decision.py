"""One endpoint pick: from an OpenAI request body and the gateway's candidate endpoints to
a Schedule at the traffic controller, the destination engine and the rewritten body.

    path -> endpoint kind; subset -> prefill candidates (503 when none is ready);
    validate the body (400); token ids (engine /tokenize); cached prefix (agent Lookup);
    Schedule with the candidates (429 on RESOURCE_EXHAUSTED, 503 when the controller
    cannot be reached); the picked PREFILL engine's ip:port; the body with
    `kv_transfer_params.dualpath` (role "whole": that engine prefills and decodes).

A scheduled request stays booked until `release` (Complete, or Cancel with a reason); a
failure after Schedule cancels it here. The router's parts do the work (`Runtime`: the
engine pool, the prefix lookup, the controller session; tokenize.py; rewrite.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from dualpath_router.app import Runtime
from dualpath_router.config import EngineSpec
from dualpath_router.errors import RouterError
from dualpath_router.openai_models import Endpoint, validate_request
from dualpath_router.picker import metrics as outcomes
from dualpath_router.picker.endpoints import engine_endpoint, prefill_candidates
from dualpath_router.picker.metrics import PickerMetrics
from dualpath_router.proxy import NOT_BOOKED, tenant_salts
from dualpath_router.rewrite import Route, salted_body, whole_body
from dualpath_router.tokenize import prompt_token_ids

log = logging.getLogger("dualpath.picker.decision")

ENDPOINTS = {e.value: e for e in Endpoint}


class PickError(Exception):
    """No destination: answered to the client as an ImmediateResponse with `status`."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome

    def body(self) -> bytes:
        return json.dumps(RouterError(self.status, self.message).body()).encode()


@dataclass(frozen=True)
class PickRequest:
    """What the data plane told the picker about one HTTP request."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    # The gateway's subset hint: None = any endpoint of the pool.
    subset: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Pick:
    """A scheduled request and where it goes (booked until released)."""

    request_id: str
    route: Route
    engine: EngineSpec
    endpoint: str  # the engine's "<ip:port>"
    body: bytes
    prompt_tokens: int
    cached_tokens: int


class Decider:
    def __init__(self, runtime: Runtime, metrics: PickerMetrics) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.metrics = metrics
        self.tenants = tenant_salts(runtime.config)
        self._releases: set[asyncio.Task[None]] = set()

    # ----- candidates ------------------------------------------------------------------
    def ready_candidates(self, subset: Sequence[str] | None) -> tuple[list[str], bool]:
        """(ids of the prefill engines allowed and up, whether the subset restricted them);
        PickError 503 when there is none."""
        pool = self.runtime.pool
        candidates = prefill_candidates((s.spec for s in pool.states.values()), subset)
        if candidates.unknown:
            log.info(
                "subset endpoints that are no prefill engine of this picker are ignored",
                extra={"unknown": list(candidates.unknown)},
            )
        if not candidates.engine_ids:
            where = "in the gateway's endpoint subset" if candidates.restricted else "known"
            raise PickError(503, f"no prefill engine is {where}", outcomes.NO_ENDPOINT)
        up = [i for i in candidates.engine_ids if pool.states[i].up]
        if not up:
            raise PickError(
                503,
                f"none of the prefill engines {list(candidates.engine_ids)} is ready",
                outcomes.NO_ENDPOINT,
            )
        return up, candidates.restricted

    def any_ready(self, subset: Sequence[str] | None) -> EngineSpec:
        """A request without a body (GET /v1/models): the first ready candidate, unbooked."""
        ids, _ = self.ready_candidates(subset)
        return self.runtime.pool.states[ids[0]].spec

    # ----- the decision ----------------------------------------------------------------
    async def decide(self, request: PickRequest) -> Pick:
        endpoint = ENDPOINTS.get(request.path.split("?", 1)[0])
        if endpoint is None:
            raise PickError(
                404,
                f"the endpoint picker routes {sorted(ENDPOINTS)} only, not {request.path!r}",
                outcomes.INVALID,
            )
        up, restricted = self.ready_candidates(request.subset)
        config = self.config
        if len(request.body) > config.max_body_bytes:
            raise PickError(
                413,
                f"request body is {len(request.body)} bytes, over the limit of"
                f" {config.max_body_bytes}",
                outcomes.INVALID,
            )
        try:
            valid = validate_request(endpoint, request.body, config.max_prompt_tokens)
            salt = (
                valid.cache_salt
                if self.tenants is None
                else self.tenants.resolve(request.headers, valid.cache_salt)
            )
            body = salted_body(valid.body, salt)
            forwarded = {k: v for k in ("authorization",) if (v := request.headers.get(k))}
            tokens = await prompt_token_ids(
                valid, self.runtime.pool, self.runtime.metrics, config.max_prompt_tokens, forwarded
            )
        except RouterError as error:
            outcome = outcomes.INVALID if error.status < 500 else outcomes.UNAVAILABLE
            raise PickError(error.status, error.message, outcome) from None
        request_id = str(uuid.uuid4())
        cached = await self.runtime.prefix.cached_tokens(tokens, request_id, cache_salt=salt)
        # The engine computes at least the last prompt token, whatever is stored.
        cached = min(cached, len(tokens) - 1)
        try:
            route = await self._schedule(
                request_id,
                len(tokens),
                cached,
                valid.max_output_tokens or 0,
                tuple(up) if restricted else (),
            )
        except asyncio.CancelledError:  # the stream ended mid-Schedule: it may be booked
            self._release_at_controller(
                request_id, outcomes.STREAM_ENDED, "stream ended during the decision"
            )
            raise
        state = self.runtime.pool.get(route.prefill_engine_id)
        problem = ""
        if state is None:
            problem = (
                f"the controller chose prefill engine {route.prefill_engine_id!r}, which this picker"
                " does not front"
            )
        elif restricted and route.prefill_engine_id not in up:
            problem = (
                f"the controller chose prefill engine {route.prefill_engine_id!r} outside the"
                " subset (a controller without prefill_candidates?)"
            )
        if state is None or problem:
            self._release_at_controller(request_id, outcomes.CONTROLLER_CHOICE, problem)
            raise PickError(503, problem, outcomes.UNAVAILABLE)
        spec = state.spec
        self.runtime.pool.add_routed(spec.id, len(tokens))
        self.metrics.in_flight.inc()
        self.metrics.picked.labels(spec.id, route.read_path).inc()
        return Pick(
            request_id=request_id,
            route=route,
            engine=spec,
            endpoint=engine_endpoint(spec),
            body=json.dumps(whole_body(body, route), separators=(",", ":")).encode(),
            prompt_tokens=len(tokens),
            cached_tokens=cached,
        )

    async def _schedule(
        self,
        request_id: str,
        total: int,
        cached: int,
        expected_output: int,
        candidates: tuple[str, ...],
    ) -> Route:
        try:
            reply = await self.runtime.session.schedule(
                request_id,
                total,
                cached,
                total - cached,
                expected_output_tokens=expected_output,
                kv_bytes_per_token=self.config.kv_bytes_per_token,
                prefill_candidates=candidates,
                wait_for_capacity_s=self.config.schedule_wait_s,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            self.runtime.metrics.controller_errors.labels("schedule", code.name).inc()
            if code not in NOT_BOOKED:  # it may have been booked before the answer was lost
                self._release_at_controller(
                    request_id, outcomes.SCHEDULE_FAILED, f"schedule failed: {code.name}"
                )
            details = exc.details()
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PickError(
                    429, f"no capacity for the request now: {details}", outcomes.OVERLOADED
                ) from None
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise PickError(
                    400, f"the traffic controller refused the request: {details}", outcomes.INVALID
                ) from None
            raise PickError(
                503,
                f"traffic controller {self.config.controller}: {code.name}: {details}",
                outcomes.UNAVAILABLE,
            ) from None
        try:
            return Route.from_assignment(reply.assignment)
        except ValueError as exc:
            self._release_at_controller(request_id, outcomes.BAD_ASSIGNMENT, str(exc))
            raise PickError(503, f"traffic controller: {exc}", outcomes.UNAVAILABLE) from None

    # ----- release -----------------------------------------------------------------------
    def prefill_done(self, pick: Pick) -> None:
        """The engine started answering: its prefill (and the read) is over. Not awaited."""
        future = self.runtime.session.prefill_done_nowait(pick.request_id)
        future.add_done_callback(_log_failure)

    def release(self, pick: Pick, reason: str = outcomes.ANSWERED, detail: str = "") -> None:
        """Complete (reason ANSWERED) or Cancel a pick at the controller, once, in a task of
        its own (it runs even when the stream handler is being cancelled)."""
        self.runtime.pool.add_routed(pick.engine.id, -pick.prompt_tokens, -1)
        self.metrics.in_flight.dec()
        self._release_at_controller(pick.request_id, reason, detail)

    def _release_at_controller(self, request_id: str, reason: str, detail: str = "") -> None:
        """`reason`: one of the bounded labels in metrics.py; `detail`: for the logs."""
        cancel_reason = "" if reason == outcomes.ANSWERED else (detail or reason)
        kind = outcomes.CANCEL if cancel_reason else outcomes.COMPLETE
        self.metrics.releases.labels(kind, reason).inc()
        task = asyncio.get_running_loop().create_task(self._release(request_id, cancel_reason))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, request_id: str, cancel_reason: str) -> None:
        session = self.runtime.session
        operation = "cancel" if cancel_reason else "complete"
        try:
            if cancel_reason:
                await session.cancel(request_id, cancel_reason, missing_ok=True)
            else:
                await session.complete(request_id, missing_ok=True)
        except grpc.RpcError as exc:
            self.runtime.metrics.controller_errors.labels(operation, exc.code().name).inc()
            log.warning(
                f"{operation} failed: the controller releases the request after its TTL",
                extra={"request_id": request_id, "code": exc.code().name},
            )

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=timeout_s)


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.info("prefill-done signal failed", extra={"error": str(future.exception())})


def elapsed(started: float) -> float:
    return time.monotonic() - started
