"""EngineReporter: a thread that registers an engine and reports its load periodically. It
re-registers when the controller answers FAILED_PRECONDITION (a restarted controller
rebuilds its state this way) and keeps retrying while the controller is unreachable."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.client.requests import EngineLoad
from dualpath_controller.client.unary import ControllerClient

log = logging.getLogger("dualpath.controller.client")


class EngineDown(Exception):
    """Raised by an EngineReporter's load function when the engine (or its node's agent)
    does not answer: no report is sent, so the controller drains the engine after its
    liveness timeout and takes it back with the next report."""


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
            except EngineDown as exc:
                log.debug("engine down: not reported", extra={"reason": str(exc)})
            except grpc.RpcError as exc:
                log.debug("report failed", extra={"code": exc.code().name})
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._registered = False  # it may come back empty: start over
            self._stop.wait(self.interval_s or 0.5)
