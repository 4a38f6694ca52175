"""The agent process: gRPC server + metrics/health endpoint around an AgentCore, with a
graceful stop (refuse new work, let transfers finish within the grace period, cancel the
rest, free buffers, deregister memory).

With an identity directory the gRPC port is mutual TLS and every call is authorized by
the caller's role (dualpath_common.authz); peer agents are called with the same identity.
Without one it is plaintext: the CLI allows that only with --insecure."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from dualpath.v1 import agent_pb2_grpc
from dualpath_common import authz, grpc_input, tls
from dualpath_common.child import write_ready_file
from dualpath_common.observability import ObservabilityServer

from dualpath_agent.core import AgentConfig, AgentCore
from dualpath_agent.peers import GRPC_OPTIONS, PeerClients
from dualpath_agent.service import AgentService

log = logging.getLogger(__name__)


class AgentProcess:
    def __init__(self, config: AgentConfig, identity: tls.IdentityDir | None = None) -> None:
        self.config = config
        self.identity = identity
        self.core = AgentCore(config)
        self.service = AgentService(self.core)
        # Peer calls (ServeLayers, Merge) present this agent's identity.
        self.service.peers = PeerClients(identity)
        self.authz_metrics = authz.AuthzMetrics(self.core.metrics.registry)
        interceptors: list[grpc.ServerInterceptor] = []
        if identity is not None:
            authorizer = authz.Authorizer(identity.identity, self.authz_metrics)
            interceptors.append(authz.AuthzInterceptor(authorizer))
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
            options=GRPC_OPTIONS,
            interceptors=interceptors,
        )
        # Corrupt request bytes: INVALID_ARGUMENT, not INTERNAL with a traceback logged.
        grpc_input.add_servicer(
            agent_pb2_grpc.add_AgentServicer_to_server, self.service, self.server
        )
        if identity is None:
            self.authz_metrics.set_mode("insecure")
            port = self.server.add_insecure_port(config.listen)
        else:
            self.authz_metrics.set_mode("mtls")
            port = self.server.add_secure_port(config.listen, identity.server_credentials())
        if not port:
            raise RuntimeError(f"cannot listen on {config.listen}")
        self.endpoint = f"{config.listen_host}:{port}"
        self.observability = ObservabilityServer(
            config.listen_host,
            config.metrics_port,
            readiness=self._readiness,
            registry=self.core.metrics.registry,
        )
        self._started = False
        self.reporter: Any = None

    def _readiness(self) -> tuple[bool, str]:
        if self.core.shutting_down.is_set():
            return False, "shutting down"
        if not self._started:
            return False, "starting"
        return True, f"ok ({self.core.peer.kind}, {self.core.storage.kind})"

    def start(self) -> AgentProcess:
        self.server.start()
        self.observability.start()
        self._started = True
        log.info("agent serving", extra=self.info())
        return self

    def info(self) -> dict[str, Any]:
        c = self.core
        return {
            "node": self.config.node,
            "role": self.config.role,
            "grpc": self.endpoint,
            "metrics": self.observability.address,
            "pid": os.getpid(),
            "agent_name": c.agent_name,
            "peer_transport": c.peer.kind,
            "storage_transport": c.storage.kind,
            "fallback_reason": c.transports.fallback_reason,
            "device_tier": c.device.info.tier,
            "store": str(self.config.store_dir),
            "qos_applied": c.qos_applied,
            "tls": "mtls" if self.identity is not None else "insecure",
            "identity": self.identity.identity.uri if self.identity is not None else None,
        }

    def write_ready_file(self, path: Path) -> None:
        write_ready_file(path, self.info())

    def stop(self, grace_s: float | None = None) -> None:
        grace = self.config.grace_s if grace_s is None else grace_s
        log.info("agent stopping", extra={"grace_s": grace, "active": self.core.active_transfers})
        if self.reporter is not None:
            self.reporter.stop()
        cancelled = self.core.drain(grace)
        self.server.stop(grace=2).wait()
        self.service.peers.close()
        self.core.close()
        self.observability.stop()
        log.info("agent stopped", extra={"cancelled_transfers": cancelled})
