"""Client helpers for components that talk to the traffic controller (demo, agents, bench).

- `ControllerClient`: blocking calls with keyword arguments instead of messages;
  `schedule(..., wait_for_capacity_s=...)` retries RESOURCE_EXHAUSTED with backoff so a
  request is delayed, never dropped.
- `EngineReporter`: a thread that registers an engine and reports its load periodically; it
  re-registers when the controller answers FAILED_PRECONDITION (a restarted controller
  rebuilds its state this way) and keeps retrying while the controller is unreachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc

from dualpath_controller.convert import ROLE_TO_PROTO, parse_role
from dualpath_controller.policy import Role

log = logging.getLogger("dualpath.controller.client")


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


class ControllerClient:
    def __init__(self, target: str, *, timeout_s: float = 5.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.TrafficControllerStub(self.channel)

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def register_engine(
        self,
        engine_id: str,
        role: Role | str,
        node: str,
        *,
        group: str = "",
        hbm_capacity_tokens: int = 0,
        agent_endpoint: str = "",
        snic_read_bytes_per_s: float = 0.0,
    ) -> pb.RegisterEngineResponse:
        engine = pb.Engine(
            engine_id=engine_id,
            role=ROLE_TO_PROTO[parse_role(role)],
            node=node,
            group=group,
            hbm_capacity_tokens=hbm_capacity_tokens,
            agent_endpoint=agent_endpoint,
            snic_read_bytes_per_s=snic_read_bytes_per_s,
        )
        return self.register(engine)

    def register(self, engine: pb.Engine) -> pb.RegisterEngineResponse:
        return self.stub.RegisterEngine(
            pb.RegisterEngineRequest(engine=engine), timeout=self.timeout_s
        )

    def deregister_engine(self, engine_id: str) -> None:
        self.stub.DeregisterEngine(
            pb.DeregisterEngineRequest(engine_id=engine_id), timeout=self.timeout_s
        )

    def report_load(self, engine_id: str, report_seq: int, load: EngineLoad) -> bool:
        """Send one report; returns False when the controller found it stale."""
        report = pb.LoadReport(engine_id=engine_id, report_seq=report_seq, **vars(load))
        return self.stub.ReportLoad(report, timeout=self.timeout_s).accepted

    def schedule(
        self,
        request_id: str,
        total_tokens: int,
        cached_tokens: int,
        append_tokens: int,
        *,
        expected_output_tokens: int = 0,
        kv_bytes_per_token: int = 0,
        session_id: str = "",
        wait_for_capacity_s: float = 0.0,
    ) -> pb.ScheduleResponse:
        """Schedule; on RESOURCE_EXHAUSTED retry (idempotent) with backoff for up to
        `wait_for_capacity_s` seconds, then raise the last error."""
        message = pb.ScheduleRequest(
            request_id=request_id,
            total_tokens=total_tokens,
            cached_tokens=cached_tokens,
            append_tokens=append_tokens,
            expected_output_tokens=expected_output_tokens,
            kv_bytes_per_token=kv_bytes_per_token,
            session_id=session_id,
        )
        deadline = time.monotonic() + wait_for_capacity_s
        backoff = 0.01
        while True:
            try:
                return self.stub.Schedule(message, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                retryable = exc.code() in (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.UNAVAILABLE,
                )
                if not retryable or time.monotonic() + backoff > deadline:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    def complete(self, request_id: str, *, missing_ok: bool = False) -> bool:
        """Release a request. With missing_ok, NOT_FOUND (e.g. after a controller restart)
        returns False instead of raising."""
        return self._finish(
            lambda: self.stub.Complete(
                pb.CompleteRequest(request_id=request_id), timeout=self.timeout_s
            ),
            missing_ok,
        )

    def cancel(self, request_id: str, reason: str = "", *, missing_ok: bool = False) -> bool:
        return self._finish(
            lambda: self.stub.Cancel(
                pb.CancelRequest(request_id=request_id, reason=reason), timeout=self.timeout_s
            ),
            missing_ok,
        )

    @staticmethod
    def _finish(call: Callable[[], object], missing_ok: bool) -> bool:
        try:
            call()
        except grpc.RpcError as exc:
            if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def status(self) -> pb.ClusterStatus:
        return self.stub.GetStatus(pb.StatusRequest(), timeout=self.timeout_s)


class EngineReporter:
    """Background registration + periodic load reports for one engine."""

    def __init__(
        self,
        client: ControllerClient,
        engine: pb.Engine,
        load: Callable[[], EngineLoad],
        *,
        interval_s: float | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.load = load
        self.interval_s = interval_s
        self.seq = 0
        self.registrations = 0
        self._stop = threading.Event()
        self._registered = False
        self._thread = threading.Thread(
            target=self._loop, name=f"reporter-{engine.engine_id}", daemon=True
        )

    def start(self) -> EngineReporter:
        self._thread.start()
        return self

    def stop(self, deregister: bool = False) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if deregister:
            try:
                self.client.deregister_engine(self.engine.engine_id)
            except grpc.RpcError as exc:
                log.warning("deregister failed", extra={"code": exc.code().name})

    def report_once(self) -> bool:
        """Register if needed, then send one report. Returns whether it was accepted."""
        if not self._registered:
            reply = self.client.register(self.engine)
            self._registered = True
            self.registrations += 1
            self.seq = 0  # a (re-)registered engine's sequence starts over
            if self.interval_s is None:
                self.interval_s = reply.report_interval_ms / 1000
        self.seq += 1
        try:
            return self.client.report_load(self.engine.engine_id, self.seq, self.load())
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self._registered = False  # controller restarted or forgot us: register again
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_once()
            except grpc.RpcError as exc:
                log.debug("report failed", extra={"code": exc.code().name})
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._registered = False  # it may come back empty: start over
            self._stop.wait(self.interval_s or 0.5)
