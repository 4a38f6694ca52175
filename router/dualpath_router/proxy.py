"""One request through the router, from its body to the last byte of its answer.

    validate -> token ids (as sent, or the engine's /tokenize) -> cached prefix (agent
    Lookup) -> Schedule -> prefill engine (first token only) -> decode engine -> answer
    (streamed through unchanged) -> Complete

A request is booked at the controller from its Schedule until exactly one Complete or
Cancel: any failure after Schedule (an engine unreachable or failing, a client that hangs
up before or during its answer, a bug) cancels it with the reason. Releases run as tasks of
their own, so a cancelled handler or stream still releases; `drain` waits for them.
Errors are RouterError: 4xx naming the field for bad input (an engine's own 4xx is passed
through as it answered), 503 naming the controller or the engine that failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import httpx
from dualpath_controller.client import AsyncControllerSession
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dualpath_router import metrics as outcomes
from dualpath_router.config import EngineSpec, RouterConfig
from dualpath_router.engines import EnginePool
from dualpath_router.errors import RouterError
from dualpath_router.metrics import RouterMetrics
from dualpath_router.openai_models import Endpoint, ValidRequest, validate_request
from dualpath_router.prefix import PrefixLookup
from dualpath_router.rewrite import Route, decode_body, prefill_body, salted_body
from dualpath_router.tenancy import TenantSalts
from dualpath_router.tokenize import excerpt, prompt_token_ids, upstream_error_message

log = logging.getLogger("dualpath.router.proxy")


def _progress_failed(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.info("prefill-done signal failed", extra={"error": str(future.exception())})


T = TypeVar("T")

# Schedule errors after which the request is certainly not booked. After any other (a
# deadline, a stream that ended) it may be: the router cancels it to be sure.
NOT_BOOKED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)
# Client headers passed on to the engines (an engine may require an API key).
FORWARDED_HEADERS = ("authorization",)


class ClientGone(Exception):
    """The client hung up before its answer started."""


@dataclass
class RequestFlow:
    """The state of one request (one per request, never shared)."""

    request: ValidRequest
    request_id: str
    started: float
    headers: dict[str, str]
    # The request's cache salt (the client's, or derived from its tenant header) and the
    # client's body carrying it: what the engines get, and what Lookup hashes under.
    cache_salt: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    token_ids: tuple[int, ...] = ()
    cached_tokens: int = 0
    route: Route | None = None
    # Scheduled at the controller and not released yet.
    booked: bool = False
    # The decode engine counts this request as routed to it (until release).
    on_decode: bool = False
    first_byte_at: float | None = None
    # Set when the decode engine's answer was relayed to its end.
    answered: bool = False
    # Why the answer stopped early (engine failure mid-stream); empty otherwise.
    failure: str = ""

    @property
    def read_path(self) -> str:
        return self.route.read_path if self.route else "none"

    @property
    def endpoint(self) -> Endpoint:
        return self.request.endpoint

    def response_headers(self) -> dict[str, str]:
        headers = {"x-dualpath-request-id": self.request_id}
        if self.route is not None:
            headers |= {
                "x-dualpath-prefill-engine": self.route.prefill_engine_id,
                "x-dualpath-decode-engine": self.route.decode_engine_id,
                "x-dualpath-read-path": self.route.read_path,
                "x-dualpath-prompt-tokens": str(len(self.token_ids)),
                "x-dualpath-cached-tokens": str(self.cached_tokens),
            }
        return headers


def error_response(error: RouterError, headers: dict[str, str] | None = None) -> Response:
    if error.upstream_body is not None:
        return Response(
            error.upstream_body,
            status_code=error.status,
            media_type=error.upstream_media_type,
            headers=headers,
        )
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or RouterError(413) as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RouterError(413, f"request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RouterError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Run `work` unless the client hangs up first: then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping: stop the work too
        watch.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    watch.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()
    return task.result()


class Proxy:
    def __init__(
        self,
        config: RouterConfig,
        pool: EnginePool,
        session: AsyncControllerSession,
        prefix: PrefixLookup,
        metrics: RouterMetrics,
    ) -> None:
        self.config = config
        self.pool = pool
        self.session = session
        self.prefix = prefix
        self.metrics = metrics
        self._releases: set[asyncio.Task[None]] = set()
        # Salts derived from a tenant header (None: the client's cache_salt is used as sent).
        self.tenants = tenant_salts(config)

    # ----- entry point ---------------------------------------------------------------------
    async def handle(self, endpoint: Endpoint, request: Request) -> Response:
        started = time.monotonic()
        try:
            raw = await read_body(request, self.config.max_body_bytes)
            valid = validate_request(endpoint, raw, self.config.max_prompt_tokens)
            salt = (
                valid.cache_salt
                if self.tenants is None
                else self.tenants.resolve(request.headers, valid.cache_salt)
            )
        except ClientDisconnect:  # gone while sending its body: nothing was booked
            self._count(endpoint, "none", outcomes.DISCONNECTED, started)
            return Response(status_code=499)
        except RouterError as error:
            self._count(endpoint, "none", error.outcome, started)
            log.info(
                "request refused",
                extra={"endpoint": endpoint.label, "status": error.status, "error": error.message},
            )
            return error_response(error)
        headers = {k: v for k in FORWARDED_HEADERS if (v := request.headers.get(k)) is not None}
        flow = RequestFlow(
            valid, str(uuid.uuid4()), started, headers, salt, salted_body(valid.body, salt)
        )
        try:
            return await until_disconnect(self._serve(flow), request.receive)
        except ClientGone:
            self._finish(flow, outcomes.DISCONNECTED)
            return Response(status_code=499)  # nobody is there to read it
        except RouterError as error:
            self._finish(flow, error.outcome, error.message)
            return error_response(error, flow.response_headers())
        except Exception as exc:  # a bug: the request was released by _serve
            log.exception("request failed", extra={"request_id": flow.request_id})
            bug = RouterError(
                500, f"router error: {type(exc).__name__}: {exc}", kind="server_error"
            )
            self._finish(flow, outcomes.ROUTER_ERROR, bug.message)
            return error_response(bug, flow.response_headers())

    async def _serve(self, flow: RequestFlow) -> Response:
        try:
            flow.token_ids = await self._token_ids(flow)
            flow.cached_tokens = await self.prefix.cached_tokens(
                flow.token_ids, flow.request_id, cache_salt=flow.cache_salt
            )
            flow.route = await self._schedule(flow)
            if flow.route.disaggregated:
                await self._prefill(flow, flow.route)
                self._prefill_done(flow.request_id)
            upstream = await self._open_decode(flow, flow.route)
            if flow.request.stream:
                return StreamingAnswer(self, flow, upstream)
            try:
                body = b"".join([chunk async for chunk in self._relay(flow, upstream)])
            finally:
                await upstream.aclose()
            if not flow.answered:
                raise RouterError(503, flow.failure, outcome=outcomes.ENGINE_ERROR)
        except BaseException as exc:  # errors, and a cancel when the client hangs up
            self._release(flow, cancel_reason=_reason(exc))
            raise
        self._release(flow, cancel_reason="")
        self._finish(flow, outcomes.OK)
        return Response(
            body,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            headers=flow.response_headers(),
        )

    # ----- steps -----------------------------------------------------------------------------
    async def _token_ids(self, flow: RequestFlow) -> tuple[int, ...]:
        return await prompt_token_ids(
            flow.request, self.pool, self.metrics, self.config.max_prompt_tokens, flow.headers
        )

    def _prefill_done(self, request_id: str) -> None:
        """The prefill answered, so the request's read and prefill are done: the controller
        gives the prefill engine's booked load back now (the simulator's lifecycle does the
        same). Not awaited: the decode need not wait for it; a failure is only logged (the
        load is released at Complete anyway)."""
        self.session.prefill_done_nowait(request_id).add_done_callback(_progress_failed)

    async def _schedule(self, flow: RequestFlow) -> Route:
        total = len(flow.token_ids)
        # The engine computes at least the last prompt token, whatever is stored.
        cached = min(flow.cached_tokens, total - 1)
        flow.cached_tokens = cached
        try:
            reply = await self.session.schedule(
                flow.request_id,
                total,
                cached,
                total - cached,
                expected_output_tokens=flow.request.max_output_tokens or 0,
                kv_bytes_per_token=self.config.kv_bytes_per_token,
                wait_for_capacity_s=self.config.schedule_wait_s,
            )
        except grpc.RpcError as exc:
            code = exc.code()
            self.metrics.controller_errors.labels("schedule", code.name).inc()
            if code not in NOT_BOOKED:  # it may have been booked before the answer was lost
                flow.booked = True
                self._release(flow, cancel_reason=f"schedule failed: {code.name}")
            details = exc.details()
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise RouterError(
                    400,
                    f"the traffic controller refused the request: {details}",
                    outcome=outcomes.INVALID,
                ) from None
            raise RouterError(
                503,
                f"traffic controller {self.config.controller}: cannot schedule the request:"
                f" {code.name}: {details}",
                outcome=outcomes.CONTROLLER_ERROR,
            ) from None
        flow.booked = True
        self.metrics.in_flight.inc()
        self.metrics.prompt_tokens.inc(total)
        self.metrics.cached_tokens.inc(cached)
        try:
            return Route.from_assignment(reply.assignment)
        except ValueError as exc:
            raise RouterError(
                503,
                f"traffic controller {self.config.controller}: {exc}",
                outcome=outcomes.CONTROLLER_ERROR,
            ) from None

    def _engine(self, engine_id: str, role: str) -> EngineSpec:
        state = self.pool.get(engine_id)
        if state is None:
            raise RouterError(
                503,
                f"the traffic controller chose {role} engine {engine_id!r}, which this router"
                " does not front (another router registered it?)",
                outcome=outcomes.CONTROLLER_ERROR,
            )
        return state.spec

    def _engine_failure(self, spec: EngineSpec, role: str, kind: str, detail: str) -> RouterError:
        self.metrics.engine_errors.labels(spec.id, kind).inc()
        return RouterError(
            503,
            f"{role} engine {spec.id} ({spec.url}): {detail}",
            outcome=outcomes.ENGINE_ERROR,
        )

    def _engine_answer_error(
        self, spec: EngineSpec, role: str, response: httpx.Response, content: bytes
    ) -> RouterError:
        """A non-2xx answer: 4xx passed through as the engine sent it, else 503."""
        if 400 <= response.status_code < 500:
            self.metrics.engine_errors.labels(spec.id, "http_4xx").inc()
            error = RouterError(
                response.status_code,
                f"{role} engine {spec.id}: {upstream_error_message(content)}",
                outcome=outcomes.ENGINE_REJECTED,
            )
            error.upstream_body = content
            error.upstream_media_type = response.headers.get("content-type")
            return error
        return self._engine_failure(
            spec, role, "http_5xx", f"HTTP {response.status_code}: {excerpt(content)}"
        )

    async def _prefill(self, flow: RequestFlow, route: Route) -> None:
        spec = self._engine(route.prefill_engine_id, "prefill")
        body = prefill_body(flow.body, route)
        tokens = len(flow.token_ids)
        self.pool.add_routed(spec.id, tokens)
        try:
            reply = await self.pool.http.post(
                f"{spec.url}{flow.endpoint.value}", json=body, headers=flow.headers
            )
        except httpx.HTTPError as exc:
            raise self._engine_failure(
                spec, "prefill", "unreachable", f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            self.pool.add_routed(spec.id, -tokens, -1)
        if not reply.is_success:
            raise self._engine_answer_error(spec, "prefill", reply, reply.content)

    async def _open_decode(self, flow: RequestFlow, route: Route) -> httpx.Response:
        spec = self._engine(route.decode_engine_id, "decode")
        body = decode_body(flow.body, route) if route.disaggregated else flow.body
        http = self.pool.http
        self.pool.add_routed(spec.id, len(flow.token_ids))
        flow.on_decode = True
        request = http.build_request(
            "POST", f"{spec.url}{flow.endpoint.value}", json=body, headers=flow.headers
        )
        try:
            upstream = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._engine_failure(
                spec, "decode", "unreachable", f"{type(exc).__name__}: {exc}"
            ) from None
        if not upstream.is_success:
            try:
                content = await upstream.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await upstream.aclose()
            raise self._engine_answer_error(spec, "decode", upstream, content)
        return upstream

    async def _relay(self, flow: RequestFlow, upstream: httpx.Response) -> AsyncIterator[bytes]:
        """The decode engine's answer, byte for byte; on a failure mid-answer, an SSE error
        event (a stream) or nothing more (then `flow.failure` says why)."""
        assert flow.route is not None
        engine_id = flow.route.decode_engine_id
        try:
            async for chunk in upstream.aiter_raw():
                if flow.first_byte_at is None:
                    flow.first_byte_at = time.monotonic()
                    self.metrics.ttft_seconds.labels(
                        flow.endpoint.label, str(flow.request.stream).lower()
                    ).observe(flow.first_byte_at - flow.started)
                yield chunk
        except httpx.HTTPError as exc:
            flow.failure = f"decode engine {engine_id} failed during its answer: {exc!r}"
            self.metrics.engine_errors.labels(engine_id, "stream").inc()
            if flow.request.stream:
                error = RouterError(503, flow.failure)
                yield f"data: {json.dumps(error.body())}\n\n".encode()
            return
        flow.answered = True

    # ----- release and accounting ------------------------------------------------------------
    def _release(self, flow: RequestFlow, *, cancel_reason: str) -> None:
        """Complete (no reason) or Cancel the request at the controller, once, in a task of
        its own (so that it runs even when the caller is being cancelled)."""
        if flow.on_decode and flow.route is not None:
            self.pool.add_routed(flow.route.decode_engine_id, -len(flow.token_ids), -1)
            flow.on_decode = False
        if not flow.booked:
            return
        flow.booked = False
        if flow.route is not None:
            self.metrics.in_flight.dec()
        task = asyncio.get_running_loop().create_task(
            self._release_at_controller(flow, cancel_reason)
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_at_controller(self, flow: RequestFlow, cancel_reason: str) -> None:
        operation = "cancel" if cancel_reason else "complete"
        try:
            if cancel_reason:
                await self.session.cancel(flow.request_id, cancel_reason, missing_ok=True)
            else:
                await self.session.complete(flow.request_id, missing_ok=True)
        except grpc.RpcError as exc:
            self.metrics.controller_errors.labels(operation, exc.code().name).inc()
            log.warning(
                f"{operation} failed: the controller releases the request after its TTL",
                extra={"request_id": flow.request_id, "code": exc.code().name},
            )

    def finish_stream(self, flow: RequestFlow, upstream: httpx.Response) -> None:
        """After a streamed answer: close the engine's side, release, count."""
        reason = flow.failure or ("" if flow.answered else "client disconnected mid-stream")
        self._release(flow, cancel_reason=reason)
        closing = asyncio.get_running_loop().create_task(upstream.aclose())
        self._releases.add(closing)
        closing.add_done_callback(self._releases.discard)
        if flow.answered:
            outcome = outcomes.OK
        elif flow.failure:
            outcome = outcomes.ENGINE_ERROR
        else:
            outcome = outcomes.DISCONNECTED
        self._finish(flow, outcome, reason)

    def _count(self, endpoint: Endpoint, read_path: str, outcome: str, started: float) -> None:
        self.metrics.requests.labels(endpoint.label, read_path, outcome).inc()
        self.metrics.request_seconds.labels(endpoint.label, outcome).observe(
            time.monotonic() - started
        )

    def _finish(self, flow: RequestFlow, outcome: str, problem: str = "") -> None:
        self._count(flow.endpoint, flow.read_path, outcome, flow.started)
        route = flow.route
        log.info(
            "request finished",
            extra={
                "request_id": flow.request_id,
                "endpoint": flow.endpoint.label,
                "outcome": outcome,
                "problem": problem,
                "stream": flow.request.stream,
                "read_path": flow.read_path,
                "prefill_engine": route.prefill_engine_id if route else "",
                "decode_engine": route.decode_engine_id if route else "",
                "prompt_tokens": len(flow.token_ids),
                "cached_tokens": flow.cached_tokens,
                # Whether the request had its own cache (the salt itself is never logged).
                "salted": flow.cache_salt is not None,
                "ttft_s": round(flow.first_byte_at - flow.started, 6)
                if flow.first_byte_at
                else None,
                "latency_s": round(time.monotonic() - flow.started, 6),
            },
        )

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for pending releases (at shutdown, before the session closes)."""
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=timeout_s)


def tenant_salts(config: RouterConfig) -> TenantSalts | None:
    """The tenant-header salts when configured (`--tenant-header`, `--tenant-secret-file`)."""
    if config.tenant_header is None or config.tenant_secret_file is None:
        return None
    return TenantSalts.from_file(config.tenant_header, config.tenant_secret_file)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RouterError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "client disconnected before the answer started"
    return f"router error: {type(exc).__name__}: {exc}"


class StreamingAnswer(StreamingResponse):
    """The decode engine's stream, relayed; whatever ends it (its end, an engine failure,
    the client hanging up), the request is released and counted once."""

    def __init__(self, proxy: Proxy, flow: RequestFlow, upstream: httpx.Response) -> None:
        super().__init__(
            proxy._relay(flow, upstream),
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "text/event-stream"),
            headers=flow.response_headers(),
        )
        self.proxy = proxy
        self.flow = flow
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.proxy.finish_stream(self.flow, self.upstream)
