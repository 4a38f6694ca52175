"""ControllerClient: the controller's unary calls with keyword arguments instead of
messages (registration, load reports, agent failures, status, and the blocking
schedule / complete / cancel of BlockingCalls)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common import tls

from dualpath_controller.client.blocking import BlockingCalls
from dualpath_controller.client.requests import EngineLoad
from dualpath_controller.convert import ROLE_TO_PROTO, parse_role
from dualpath_controller.policy import Role


class ControllerClient(BlockingCalls):
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 5.0,
        tls_ca: str | Path | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        """`identity`: mutual TLS with this identity directory (the controller is verified
        as pki.role_dns_name("controller")). `tls_ca`: server-only TLS trusting a CA file or
        a mounted TLS Secret directory. Neither: plaintext (the controller then must listen
        without TLS too)."""
        self.target = target
        self.timeout_s = timeout_s
        self._channels = tls.RenewingChannel(
            lambda: tls.channel(target, tls_ca, identity=identity, server_role="controller"),
            identity,
        )
        self._stub_of: tuple[grpc.Channel, pb_grpc.TrafficControllerStub] | None = None

    @property
    def channel(self) -> grpc.Channel:
        """The current channel (a new one after a certificate rotation, see tls.py)."""
        return self._channels.current()[0]

    @property
    def stub(self) -> pb_grpc.TrafficControllerStub:
        channel = self.channel
        if self._stub_of is None or self._stub_of[0] is not channel:
            self._stub_of = (channel, pb_grpc.TrafficControllerStub(channel))
        return self._stub_of[1]

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.all():
            channel.close()

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
        report = load.report(engine_id, report_seq)
        return self.stub.ReportLoad(report, timeout=self.timeout_s).accepted

    def report_agent_failure(self, agent_endpoint: str, reason: str) -> list[str]:
        """Tell the controller an agent failed under us; returns the engines it drained."""
        reply = self.stub.ReportAgentFailure(
            pb.AgentFailureReport(agent_endpoint=agent_endpoint, reason=reason[:256]),
            timeout=self.timeout_s,
        )
        return list(reply.drained_engine_ids)

    def status(self) -> pb.ClusterStatus:
        return self.stub.GetStatus(pb.StatusRequest(), timeout=self.timeout_s)

    # ----- one try of each release-cycle call, for BlockingCalls -----

    def _schedule_once(self, message: pb.ScheduleRequest) -> pb.ScheduleResponse:
        return self.stub.Schedule(message, timeout=self.timeout_s)

    def _complete_once(self, request_id: str) -> object:
        return self.stub.Complete(pb.CompleteRequest(request_id=request_id), timeout=self.timeout_s)

    def _progress_once(self, request_id: str, prefill_done: bool) -> object:
        if prefill_done:
            message = pb.PrefillDoneRequest(request_id=request_id)
            return self.stub.PrefillDone(message, timeout=self.timeout_s)
        return self.stub.ReadDone(pb.ReadDoneRequest(request_id=request_id), timeout=self.timeout_s)

    def _cancel_once(self, request_id: str, reason: str) -> object:
        return self.stub.Cancel(
            pb.CancelRequest(request_id=request_id, reason=reason), timeout=self.timeout_s
        )
