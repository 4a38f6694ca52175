"""Reports the node's storage read queue to the traffic controller (optional).

The agent registers the engines of its node (given with --engine) and sends a LoadReport
for each at the interval the controller asks for. The read queue (read_q), its bytes and
tokens, and the SNIC bytes in flight are node facts the agent owns. Engine facts (seq_e,
tok_e, free HBM) belong to the engines: a caller that emulates engines (the demo) passes
`engine_load` to supply them; without it they are reported as 0 requests and full HBM.
A FAILED_PRECONDITION answer (controller restarted, engine unknown) makes it register again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from dualpath.v1 import traffic_controller_pb2 as tc
from dualpath_common import tls
from dualpath_controller.client import ControllerClient

log = logging.getLogger(__name__)

# A peer that keeps failing under many loads is reported once a second at most.
PEER_REPORT_EVERY_S = 1.0

# engine id -> (unfinished_requests, unfinished_tokens, free_hbm_tokens)
EngineLoadFn = Callable[[str], tuple[int, int, int]]


class LoadReporter:
    def __init__(
        self,
        agent: Any,
        controller: str,
        engine_ids: Sequence[str],
        hbm_tokens: int,
        engine_load: EngineLoadFn | None = None,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
        placeholder: bool = True,
    ) -> None:
        """`placeholder`: without `engine_ids`, register NODE/engine0 (a stand-in engine for
        tools and tests); False when a router registers the node's real engines."""
        self.agent = agent
        self.core = agent.core
        self.controller = controller
        self.engine_ids = list(engine_ids)
        if not self.engine_ids and placeholder:
            self.engine_ids = [f"{self.core.config.node}/engine0"]
        self.hbm_tokens = hbm_tokens
        self.engine_load = engine_load or (lambda _id: (0, 0, hbm_tokens))
        # A renewed certificate is used from the next connection on (ControllerClient
        # remakes its channel, see tls.RenewingChannel).
        self._client = ControllerClient(controller, tls_ca=tls_ca, identity=identity)
        # Monotonic across restarts of this agent: start from the wall clock.
        self._seq = itertools.count(time.time_ns() // 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reporter")
        self.interval_s = 0.5
        self.reports_sent = 0
        self._peer_lock = threading.Lock()
        self._peers_reported: dict[str, float] = {}

    def start(self) -> None:
        if self.engine_ids:
            self._thread.start()
            return
        log.info(
            "no engines to register: this node's engines are registered by a router; the"
            " controller link reports failed peers only",
            extra={"controller": self.controller},
        )

    def peer_failed(self, agent_endpoint: str, reason: str) -> None:
        """A peer agent failed under one of this agent's loads: tell the controller, so it
        stops assigning that node now rather than after its liveness timeout. Sent from a
        short-lived thread (a load never waits on the controller), once a second per peer."""
        now = time.monotonic()
        with self._peer_lock:
            if now - self._peers_reported.get(agent_endpoint, -PEER_REPORT_EVERY_S) < (
                PEER_REPORT_EVERY_S
            ):
                return
            self._peers_reported[agent_endpoint] = now
        threading.Thread(
            target=self._send_peer_failure,
            args=(agent_endpoint, reason),
            daemon=True,
            name="peer-failure",
        ).start()

    def _send_peer_failure(self, agent_endpoint: str, reason: str) -> None:
        try:
            drained = self._client.report_agent_failure(agent_endpoint, reason)
        except grpc.RpcError as exc:
            log.warning(
                "peer failure not reported",
                extra={"peer": agent_endpoint, "code": exc.code().name},
            )
            return
        log.info(
            "peer failure reported",
            extra={"peer": agent_endpoint, "drained": drained},
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for engine_id in self.engine_ids:
            with contextlib.suppress(grpc.RpcError):
                self._client.stub.DeregisterEngine(
                    tc.DeregisterEngineRequest(engine_id=engine_id), timeout=2
                )
        self._client.close()

    def _register(self) -> None:
        role = (
            tc.EngineRole.ENGINE_ROLE_PREFILL
            if self.core.config.role == "prefill"
            else tc.EngineRole.ENGINE_ROLE_DECODE
        )
        for engine_id in self.engine_ids:
            reply = self._client.stub.RegisterEngine(
                tc.RegisterEngineRequest(
                    engine=tc.Engine(
                        engine_id=engine_id,
                        role=role,
                        node=self.core.config.node,
                        hbm_capacity_tokens=self.hbm_tokens,
                        agent_endpoint=self.agent.endpoint,
                        snic_read_bytes_per_s=self.core.bucket.bytes_per_s,
                    )
                ),
                timeout=5,
            )
            if reply.report_interval_ms:
                self.interval_s = reply.report_interval_ms / 1000
        log.info(
            "engines registered", extra={"controller": self.controller, "engines": self.engine_ids}
        )

    def report_once(self) -> None:
        q = self.core.read_queue.snapshot()
        for engine_id in self.engine_ids:
            requests, tokens, free_hbm = self.engine_load(engine_id)
            self._client.stub.ReportLoad(
                tc.LoadReport(
                    engine_id=engine_id,
                    report_seq=next(self._seq),
                    unfinished_requests=requests,
                    unfinished_tokens=tokens,
                    free_hbm_tokens=free_hbm,
                    read_queue_length=q.length,
                    read_queue_bytes=q.bytes_pending,
                    read_queue_tokens=q.tokens_pending,
                    snic_inflight_bytes=q.inflight_bytes,
                ),
                timeout=5,
            )
            self.reports_sent += 1

    def _run(self) -> None:
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
                self.report_once()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    registered = False
                log.warning(
                    "controller report failed",
                    extra={"controller": self.controller, "code": exc.code().name},
                )
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.interval_s)
