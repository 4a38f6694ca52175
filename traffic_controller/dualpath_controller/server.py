"""The TrafficController gRPC service: a thin asyncio (grpc.aio) layer over ControllerState.

Why grpc.aio: measured side by side in one process (bench/bench_controller_aio.py: the same
state served by the former threaded server and by grpc.aio, alternating runs), grpc.aio
costs ~5-10% less server CPU per request for both the unary calls and Session, and its tail
latency is lower: a message wakes one event-loop thread instead of being handed between a
poller thread and a pool thread (the threaded server made ~30 futex calls per message).

Every handler runs on one event-loop thread (in a background thread of ControllerServer),
and the state calls are short and synchronous (~15-30 us), so decisions are serialised
without waiting on each other. `lock` still guards the state against the other threads that
read it (/readyz).

Size: this module is ~630 lines, over the project's ~600. It is one concern, the gRPC
adapter; what makes it long is the batching window's Session reader and in-order writer,
which share the server's lock and event loop and would only be harder to follow apart (how
a batch is walked and answered lives in session_batch.py).

Two ways to reach the same operations (`_schedule`, `_complete`, `_cancel`, shared):
- unary Schedule / Complete / Cancel: one gRPC call each;
- Session: a bidirectional stream of batches of operations with correlation ids, for
  high-rate frontends. A message costs about what a unary call costs minus the call set-up,
  and a busy client packs what it queued into one message, so an operation costs well under
  half. A failed operation is answered with its status, the stream goes on.

Long-lived calls are capped so a misbehaving client cannot pile them up: StreamLoad and
WatchStatus at half of --max-workers, Session streams at --max-sessions.

The clock lives here: reports are stamped with time.monotonic() and a sweeper task drains
engines that stop reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common import authz, grpc_input, tls
from dualpath_common.observability import ObservabilityServer

from dualpath_controller.session_batch import (
    Prepared,
    ScheduleRun,
    Waiting,
    answer_error,
    steps,
    write_prepared,
)
from dualpath_controller.state import ControllerError, ControllerState

log = logging.getLogger("dualpath.controller")
T = TypeVar("T")
M = TypeVar(
    "M", pb.CompleteResponse, pb.CancelResponse, pb.ReadDoneResponse, pb.PrefillDoneResponse
)
MIN_WATCH_INTERVAL_S = 0.1
# Operations in one SessionRequestBatch: more is a client bug (it would also hold the event
# loop for long: ~30 us per operation), so the stream ends with INVALID_ARGUMENT.
MAX_SESSION_BATCH = 1024
# How long a refused Session stream waits for its first batch to answer it in band.
REFUSED_SESSION_READ_S = 1.0
NO_OPERATION = (
    "SessionRequest.operation must be set (schedule, complete, cancel, read_done or"
    " prefill_done); a newer client?"
)
Operation = Callable[..., Any]


def _mark_set(oneof_field: M) -> M:
    """Select an empty message field of a oneof (it has nothing to assign)."""
    oneof_field.SetInParent()
    return oneof_field


class TrafficControllerService(pb_grpc.TrafficControllerServicer):
    def __init__(
        self,
        state: ControllerState,
        *,
        max_long_lived_calls: int,
        max_sessions: int = 16,
        clock: Callable[[], float] = time.monotonic,
        batch_window_s: float = 0.0,
    ) -> None:
        if batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {batch_window_s}")
        self.state = state
        self.clock = clock
        # 0: each Schedule call, and each Session message's schedules, is its own batch.
        # > 0: Schedules arriving within this window (any call, any stream) are decided
        # together (the paper's batch form over more requests, for a little latency).
        self.batch_window_s = batch_window_s
        self._window: list[Waiting] = []
        self._window_timer: asyncio.TimerHandle | None = None
        self.lock = threading.Lock()
        self.stopping = asyncio.Event()  # binds to the server's loop on first use
        self.max_long_lived_calls = max_long_lived_calls
        self.max_sessions = max_sessions
        # Open long-lived calls; only the event-loop thread touches these.
        self.long_lived_open = 0
        self.sessions_open = 0
        # The operations both the unary calls and Session run: name -> (metrics label, fn).
        # (Session schedules are decided per run of consecutive ones: `_schedule_run`.)
        self._operations: dict[str, tuple[str, Operation]] = {
            "complete": ("Session.Complete", self._complete),
            "cancel": ("Session.Cancel", self._cancel),
            "read_done": ("Session.ReadDone", self._read_done),
            "prefill_done": ("Session.PrefillDone", self._prefill_done),
        }

    # ----- the operations (callers hold self.lock) -----
    # Each takes the request and, from Session, the SessionResponse to answer into (the
    # field named like the operation); unary calls get a fresh response message.

    def _schedule(
        self, request: pb.ScheduleRequest, answer: pb.SessionResponse | None = None
    ) -> pb.ScheduleResponse:
        out = None if answer is None else answer.schedule
        return self.state.schedule(request, self.clock(), out)

    def _complete(
        self, request: pb.CompleteRequest, answer: pb.SessionResponse | None = None
    ) -> pb.CompleteResponse:
        self.state.finish(request.request_id)
        return _mark_set(answer.complete) if answer is not None else pb.CompleteResponse()

    def _cancel(
        self, request: pb.CancelRequest, answer: pb.SessionResponse | None = None
    ) -> pb.CancelResponse:
        self.state.finish(request.request_id, cancelled=True, reason=request.reason)
        return _mark_set(answer.cancel) if answer is not None else pb.CancelResponse()

    def _read_done(
        self, request: pb.ReadDoneRequest, answer: pb.SessionResponse | None = None
    ) -> pb.ReadDoneResponse:
        self.state.progress(request.request_id, prefill_done=False)
        return _mark_set(answer.read_done) if answer is not None else pb.ReadDoneResponse()

    def _prefill_done(
        self, request: pb.PrefillDoneRequest, answer: pb.SessionResponse | None = None
    ) -> pb.PrefillDoneResponse:
        self.state.progress(request.request_id, prefill_done=True)
        return _mark_set(answer.prefill_done) if answer is not None else pb.PrefillDoneResponse()

    # ----- the batching window (batch_window_s > 0) -----

    def _join_window(
        self, messages: list[pb.ScheduleRequest], outs: list[pb.ScheduleResponse | None]
    ) -> asyncio.Future[list[pb.ScheduleResponse | ControllerError]]:
        """Add Schedules to the open window (opening one); the future gets this caller's
        share of the batch's results when the window closes."""
        loop = asyncio.get_running_loop()
        waiting = Waiting(messages, outs, loop.create_future())
        self._window.append(waiting)
        if self._window_timer is None:
            self._window_timer = loop.call_later(self.batch_window_s, self._close_window)
        return waiting.done

    def _close_window(self) -> None:
        """Decide everything in the window as one batch (on the timer, or early: a stream's
        other operation must not overtake its own Schedules)."""
        if self._window_timer is not None:
            self._window_timer.cancel()
        waiting, self._window, self._window_timer = self._window, [], None
        if not waiting:
            return
        messages = [m for w in waiting for m in w.messages]
        outs = [o for w in waiting for o in w.outs]
        try:
            with self.lock:
                results = self.state.schedule_batch(messages, self.clock(), outs)
        except Exception:
            log.exception("internal error", extra={"method": "Schedule"})
            error = ControllerError(grpc.StatusCode.INTERNAL, "Schedule: internal error")
            results = [error] * len(messages)
        start = 0
        for w in waiting:
            share = results[start : start + len(w.messages)]
            start += len(w.messages)
            if not w.done.done():  # the caller may have gone (cancelled)
                w.done.set_result(share)

    # ----- error handling shared by unary calls and Session operations -----

    def _call_locked(self, method: str, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) (caller holds the lock); every failure becomes a ControllerError,
        counted in the metrics."""
        try:
            return fn(*args)
        except ControllerError as exc:
            self.state.metrics.observe_rpc_error(method, exc.code.name)
            raise
        except Exception:
            # Never crash on one bad call: the state is only mutated after all checks pass.
            log.exception("internal error", extra={"method": method})
            self.state.metrics.observe_rpc_error(method, grpc.StatusCode.INTERNAL.name)
            raise ControllerError(grpc.StatusCode.INTERNAL, f"{method}: internal error") from None

    async def _abort(
        self, method: str, context: Any, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        self.state.metrics.observe_rpc_error(method, code.name)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    async def _run(self, method: str, context: Any, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self.lock:
                return self._call_locked(method, fn, *args)
        except ControllerError as exc:
            await context.abort(exc.code, exc.message)
            raise AssertionError("unreachable: context.abort raises") from None

    async def _enter_long_lived(self, method: str, context: Any) -> None:
        if self.long_lived_open >= self.max_long_lived_calls:
            await self._abort(
                method,
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many streaming calls (limit {self.max_long_lived_calls}); use ReportLoad"
                " / GetStatus, or start the controller with more --max-workers",
            )
        self.long_lived_open += 1

    # ----- engines -----

    async def RegisterEngine(
        self, request: pb.RegisterEngineRequest, context: Any
    ) -> pb.RegisterEngineResponse:
        if not request.HasField("engine"):
            await self._abort(
                "RegisterEngine", context, grpc.StatusCode.INVALID_ARGUMENT, "engine must be set"
            )
        return await self._run(
            "RegisterEngine", context, self.state.register, request.engine, self.clock()
        )

    async def DeregisterEngine(
        self, request: pb.DeregisterEngineRequest, context: Any
    ) -> pb.DeregisterEngineResponse:
        await self._run("DeregisterEngine", context, self.state.deregister, request.engine_id)
        return pb.DeregisterEngineResponse()

    async def ReportLoad(self, request: pb.LoadReport, context: Any) -> pb.ReportLoadResponse:
        accepted = await self._run("ReportLoad", context, self.state.report, request, self.clock())
        return pb.ReportLoadResponse(accepted=accepted)

    async def ReportAgentFailure(
        self, request: pb.AgentFailureReport, context: Any
    ) -> pb.AgentFailureResponse:
        drained = await self._run(
            "ReportAgentFailure", context, self.state.agent_failed, request, self.clock()
        )
        return pb.AgentFailureResponse(drained_engine_ids=drained)

    async def StreamLoad(
        self, request_iterator: AsyncIterator[pb.LoadReport], context: Any
    ) -> pb.ReportLoadResponse:
        await self._enter_long_lived("StreamLoad", context)
        try:
            accepted = False
            async for report in request_iterator:
                accepted = await self._run(
                    "StreamLoad", context, self.state.report, report, self.clock()
                )
            return pb.ReportLoadResponse(accepted=accepted)
        finally:
            self.long_lived_open -= 1

    # ----- requests -----

    async def Schedule(self, request: pb.ScheduleRequest, context: Any) -> pb.ScheduleResponse:
        if not self.batch_window_s:
            return await self._run("Schedule", context, self._schedule, request)
        (result,) = await self._join_window([request], [None])
        if isinstance(result, ControllerError):
            await self._abort("Schedule", context, result.code, result.message)
        return result

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        return await self._run("Complete", context, self._complete, request)

    async def Cancel(self, request: pb.CancelRequest, context: Any) -> pb.CancelResponse:
        return await self._run("Cancel", context, self._cancel, request)

    async def ReadDone(self, request: pb.ReadDoneRequest, context: Any) -> pb.ReadDoneResponse:
        return await self._run("ReadDone", context, self._read_done, request)

    async def PrefillDone(
        self, request: pb.PrefillDoneRequest, context: Any
    ) -> pb.PrefillDoneResponse:
        return await self._run("PrefillDone", context, self._prefill_done, request)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequestBatch], context: Any
    ) -> None:
        """One answer batch per request batch. Leaving (client gone, cancelled) releases
        nothing: requests live until Complete/Cancel (on any channel) or their TTL."""
        if self.sessions_open >= self.max_sessions:
            message = (
                f"too many sessions open (limit {self.max_sessions}); use the unary calls, or"
                " start the controller with more --max-sessions"
            )
            # Answer the first batch in band before ending: a client write that races the
            # stream's end loses the status to grpc.aio's INTERNAL (grpc/grpc#36066). A
            # client that sends nothing soon is refused without it.
            try:
                batch = await asyncio.wait_for(context.read(), REFUSED_SESSION_READ_S)
            except TimeoutError:
                batch = grpc.aio.EOF  # type: ignore[attr-defined]
            if batch is not grpc.aio.EOF:  # type: ignore[attr-defined]
                code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                error = pb.OperationError(code=code, message=message)
                await context.write(pb.SessionResponseBatch(responses=[
                    pb.SessionResponse(correlation_id=request.correlation_id, error=error)
                    for request in batch.requests
                ]))  # fmt: skip
            await self._abort("Session", context, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.sessions_open += 1
        self.state.metrics.sessions_open.inc()
        operations = 0
        # With the batching window, answers wait for it while the next messages are read
        # (a writer task sends them in order), so a stream is not held to one per window.
        outbox: asyncio.Queue[Prepared | None] | None = None
        writer: asyncio.Task[None] | None = None
        if self.batch_window_s:
            outbox = asyncio.Queue()
            writer = asyncio.create_task(write_prepared(context, outbox))
        try:
            while True:
                batch = await context.read()
                if batch is grpc.aio.EOF:  # type: ignore[attr-defined]
                    if outbox is not None and writer is not None:
                        outbox.put_nowait(None)
                        await writer  # what was read is answered before the call ends
                    return
                size = len(batch.requests)
                if size > MAX_SESSION_BATCH:
                    await self._abort(
                        "Session",
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"SessionRequestBatch.requests has {size} operations (limit"
                        f" {MAX_SESSION_BATCH}); send smaller batches",
                    )
                operations += size
                self.state.metrics.observe_session_batch(size)
                if outbox is not None:
                    outbox.put_nowait(self.prepare_batch_windowed(batch))
                else:
                    await context.write(self.answer_batch(batch))
        finally:
            if writer is not None and not writer.done():
                writer.cancel()  # the call failed or was cancelled: nobody to answer
            self.sessions_open -= 1
            self.state.metrics.sessions_open.dec()
            log.debug("session closed", extra={"peer": context.peer(), "operations": operations})

    def answer_batch(self, batch: pb.SessionRequestBatch) -> pb.SessionResponseBatch:
        """Apply a batch's operations in order under one lock hold; each run of consecutive
        Schedules is decided as one batch (the policy's batch form). A failed operation
        becomes an OperationError in its answer, the others go on."""
        out = pb.SessionResponseBatch()
        with self.lock:
            for step in steps(batch, out):
                if isinstance(step, ScheduleRun):
                    self._schedule_run(step.messages, step.answers)
                else:
                    self._answer_one(step.item, step.kind, step.answer)
        return out

    def prepare_batch_windowed(self, batch: pb.SessionRequestBatch) -> Prepared:
        """answer_batch with the batching window: each run of Schedules joins the window
        (with the other calls' and streams'); any other operation first closes the window
        if it holds Schedules (so nothing overtakes a stream's own Schedules), then runs.
        The answer is complete once every returned wait is done."""
        out = pb.SessionResponseBatch()
        waits: list[tuple[list[pb.SessionResponse], asyncio.Future[Any]]] = []
        for step in steps(batch, out):
            if isinstance(step, ScheduleRun):
                outs = [a.schedule for a in step.answers]
                waits.append((step.answers, self._join_window(step.messages, outs)))
                continue
            if self._window:
                self._close_window()
            with self.lock:
                self._answer_one(step.item, step.kind, step.answer)
        return Prepared(out, waits, self._fill_schedules)

    def _schedule_run(
        self, messages: list[pb.ScheduleRequest], run: list[pb.SessionResponse]
    ) -> None:
        """Decide consecutive Session schedules together (caller holds the lock); each
        answer's schedule field is written in place."""
        outs = [a.schedule for a in run]
        try:
            results = self._call_locked(
                "Session.Schedule", self.state.schedule_batch, messages, self.clock(), outs
            )
        except ControllerError as exc:
            results = [exc] * len(run)
        self._fill_schedules(run, results)

    def _fill_schedules(
        self,
        run: list[pb.SessionResponse],
        results: list[pb.ScheduleResponse | ControllerError],
    ) -> None:
        for answer, result in zip(run, results, strict=True):
            if isinstance(result, ControllerError):
                self.state.metrics.observe_rpc_error("Session.Schedule", result.code.name)
                answer_error(answer, "schedule", result)

    def _answer_one(self, item: pb.SessionRequest, kind: str | None, answer: Any) -> None:
        """One non-Schedule operation (caller holds the lock)."""
        if kind is None:
            self.state.metrics.observe_rpc_error("Session", "INVALID_ARGUMENT")
            answer.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            answer.error.message = NO_OPERATION
            return
        method, operation = self._operations[kind]
        try:
            # Writes its result into the answer's field of the same name.
            self._call_locked(method, operation, getattr(item, kind), answer)
        except ControllerError as exc:
            answer_error(answer, kind, exc)

    # ----- status -----

    async def GetStatus(self, request: pb.StatusRequest, context: Any) -> pb.ClusterStatus:
        return await self._run("GetStatus", context, self.state.status, self.clock())

    async def WatchStatus(
        self, request: pb.WatchStatusRequest, context: Any
    ) -> AsyncIterator[pb.ClusterStatus]:
        await self._enter_long_lived("WatchStatus", context)
        try:
            interval = max(MIN_WATCH_INTERVAL_S, (request.interval_ms or 1000) / 1000)
            while not self.stopping.is_set():
                yield await self._run("WatchStatus", context, self.state.status, self.clock())
                with contextlib.suppress(TimeoutError):  # the interval passed: next update
                    await asyncio.wait_for(self.stopping.wait(), interval)
        finally:
            self.long_lived_open -= 1


class ControllerServer:
    """gRPC server (grpc.aio on an event loop in a background thread) + liveness sweeper +
    (optionally) the metrics/health HTTP endpoint. start() and stop() are blocking calls."""

    def __init__(
        self,
        state: ControllerState,
        listen: str = "127.0.0.1:50051",
        *,
        max_workers: int = 32,
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = None,
        max_sessions: int = 16,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
        clock: Callable[[], float] = time.monotonic,
        batch_window_s: float = 0.0,
    ) -> None:
        """`identity`: mutual TLS, callers authorized by role (dualpath_common.authz).
        `tls_cert_file`/`tls_key_file`: server-only TLS (a user-provided certificate; callers
        are not authenticated). Neither: plaintext."""
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("TLS needs both a certificate and a key file (or neither)")
        if identity is not None and tls_cert_file is not None:
            raise ValueError(
                "a TLS identity directory and a TLS certificate file exclude each other"
            )

        def on_reload(outcome: str) -> None:
            state.metrics.tls_reloads.labels(outcome).inc()

        # Read now: a missing or malformed file is a startup error that names it.
        self.credentials: grpc.ServerCredentials | None = None
        self.identity = identity
        self.authz_metrics = authz.AuthzMetrics(state.metrics.registry)
        self.security_mode = "insecure"
        if identity is not None:
            self.credentials = identity.server_credentials(on_reload)
            self.security_mode = "mtls"
        elif tls_cert_file is not None and tls_key_file is not None:
            self.credentials = tls.ReloadingServerCertificate(
                tls_cert_file, tls_key_file, on_reload
            ).credentials()
            self.security_mode = "server-tls"
        self.authz_metrics.set_mode(self.security_mode)
        if max_workers < 4:
            raise ValueError(f"max_workers must be >= 4, got {max_workers}")
        if max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {max_sessions}")
        self.state = state
        self.listen = listen
        self.max_workers = max_workers
        self.max_sessions = max_sessions
        self.clock = clock
        self.port = 0
        self.service = TrafficControllerService(
            state,
            max_long_lived_calls=max_workers // 2,
            max_sessions=max_sessions,
            clock=clock,
            batch_window_s=batch_window_s,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-loop", daemon=True
        )
        self._server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._serving = False
        self.observability: ObservabilityServer | None = None
        if metrics_port is not None:
            self.observability = ObservabilityServer(
                metrics_host,
                metrics_port,
                readiness=self._readiness,
                registry=state.metrics.registry,
            )

    def _readiness(self) -> tuple[bool, str]:
        if not self._serving:
            return False, "gRPC server not serving"
        with self.service.lock:
            return self.state.readiness()

    def start(self) -> int:
        """Bind and serve; returns the port. Raises RuntimeError when it cannot bind."""
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        except BaseException:
            self._stop_loop()
            raise
        self.state.metrics.watch_gc()
        if self.observability is not None:
            self.observability.start()
        self._serving = True
        log.info(
            "traffic controller serving",
            extra={
                "listen": self.listen,
                "port": self.port,
                "policy": self.state.policy.name,
                "params": self.state.policy.params,
                "max_workers": self.max_workers,
                "max_sessions": self.max_sessions,
                "tls": self.security_mode,
                "identity": self.identity.identity.uri if self.identity else None,
                "metrics_port": self.observability.port if self.observability else None,
            },
        )
        return self.port

    async def _start(self) -> int:
        interceptors = []
        if self.identity is not None:
            authorizer = authz.Authorizer(self.identity.identity, self.authz_metrics)
            interceptors.append(authz.AioAuthzInterceptor(authorizer))
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0)],
            interceptors=interceptors,  # type: ignore[arg-type]
        )
        # Corrupt request bytes: INVALID_ARGUMENT, not UNKNOWN with a traceback logged.
        grpc_input.add_servicer(
            pb_grpc.add_TrafficControllerServicer_to_server, self.service, server
        )
        if self.credentials is None:
            port = server.add_insecure_port(self.listen)
        else:
            port = server.add_secure_port(self.listen, self.credentials)
        await server.start()
        self._server = server
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="liveness")
        return port

    async def _sweep_forever(self) -> None:
        period = min(0.5, self.state.liveness_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                with self.service.lock:
                    self.state.sweep(self.clock())
            except Exception:
                log.exception("liveness sweep failed")

    def stop(self, grace_s: float = 1.0) -> None:
        self._serving = False
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._stop(grace_s), self._loop)
            try:
                future.result(grace_s + 10)
            finally:
                self._stop_loop()
        if self.observability is not None:
            self.observability.stop()
        if self.state.metrics.gc_pauses is not None:
            self.state.metrics.gc_pauses.uninstall()
        log.info("traffic controller stopped")

    async def _stop(self, grace_s: float) -> None:
        self.service.stopping.set()  # long-lived calls end now, unary calls get the grace
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.stop(grace_s)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
