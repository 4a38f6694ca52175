"""Caller authorization on the gRPC servers (agents, traffic controller).

Mutual TLS (tls.py) proves that a caller holds a certificate of this cluster's CA; this
module decides what it may call. The caller's identity is the SPIFFE id in its
certificate's URI SAN (pki.py: namespace, DualPathCluster, role). A call is allowed when
the caller is in the server's own namespace and cluster and its role is listed for the
method in POLICY. Refusals: UNAUTHENTICATED when the caller has no usable identity (no
certificate, no or several DualPath ids), PERMISSION_DENIED for another cluster, a role not
listed, or a method missing from the table (deny by default). Each refusal is counted
(`dualpath_authz_denied_total{service,method,reason}`) and logged.

The check wraps each method handler (a gRPC server interceptor sees only the method name,
not the caller): `AuthzInterceptor` for grpc.server (the agent), `AioAuthzInterceptor` for
grpc.aio (the controller). Streams are checked once, when they open.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from dualpath_common import pki

log = logging.getLogger("dualpath.authz")

ANY = frozenset(pki.ROLES)  # any verified identity of the same cluster
PEERS = frozenset({"agent", "engine"})  # what moves or plants KV blocks

AGENT_SERVICE = "dualpath.v1.Agent"
CONTROLLER_SERVICE = "dualpath.v1.TrafficController"
HEALTH_SERVICE = "grpc.health.v1.Health"

# service -> method -> roles allowed. Every RPC of the services must be listed
# (tests/unit/test_authz.py checks the descriptors); an unlisted method is refused.
POLICY: Mapping[str, Mapping[str, frozenset[str]]] = {
    AGENT_SERVICE: {
        # KV bytes in and out of the store and the buffers: other agents and the engines'
        # connectors only. A router that could call these could read any tenant's cache.
        "PutBlocks": PEERS,
        "Commit": PEERS,
        "Merge": PEERS,
        "ServeLayers": PEERS,
        "Load": PEERS,
        "Release": PEERS,
        "ReadBlock": PEERS,
        "ReadRegion": PEERS,
        # Which hashes are present (the router's cached-prefix count before Schedule).
        "Lookup": frozenset({"agent", "engine", "router"}),
        "Health": ANY,
        "Stat": ANY,
        "PeerInfo": ANY,
    },
    CONTROLLER_SERVICE: {
        "Schedule": frozenset({"router", "engine"}),
        "Complete": frozenset({"router", "engine"}),
        "Cancel": frozenset({"router", "engine"}),
        "ReadDone": frozenset({"router", "engine"}),
        "PrefillDone": frozenset({"router", "engine"}),
        "Session": frozenset({"router", "engine"}),
        "RegisterEngine": frozenset({"agent", "engine", "router"}),
        "DeregisterEngine": frozenset({"agent", "engine", "router"}),
        "ReportLoad": frozenset({"agent", "engine", "router"}),
        "StreamLoad": frozenset({"agent", "engine", "router"}),
        "ReportAgentFailure": frozenset({"agent", "engine", "router"}),
        "GetStatus": ANY,
        "WatchStatus": ANY,
    },
    HEALTH_SERVICE: {"Check": ANY, "Watch": ANY},
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    caller: pki.Identity | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""  # the metric label: no_identity, wrong_cluster, wrong_role, ...


LOG_KEYS_MAX = 1024


class AuthzMetrics:
    """Refusals, and the security mode a server runs in (so an insecure one shows)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.denied = Counter(
            "dualpath_authz_denied_total",
            "gRPC calls refused by caller authorization",
            ["service", "method", "reason"],
            registry=registry,
        )
        self.mode = Gauge(
            "dualpath_grpc_security_mode",
            "1 for the gRPC security mode in use: mtls, server-tls (no caller"
            " authentication) or insecure (plaintext)",
            ["mode"],
            registry=registry,
        )

    def set_mode(self, mode: str) -> None:
        for name in ("mtls", "server-tls", "insecure"):
            self.mode.labels(name).set(1 if name == mode else 0)


def caller_identity(auth_context: Mapping[str, Any]) -> pki.Identity | None:
    """The caller's DualPath identity from grpc's auth context: its URI SANs (`peer_uri`,
    else every SAN), exactly one DualPath SPIFFE id, else None."""
    uris = list(auth_context.get("peer_uri", ())) or list(
        auth_context.get("x509_subject_alternative_name", ())
    )
    found = {
        identity
        for raw in uris
        if (identity := pki.parse_spiffe_id(raw.decode("utf-8", "replace"))) is not None
    }
    return found.pop() if len(found) == 1 else None


class Authorizer:
    """The decision for one server: its own identity, its policy, its metrics."""

    def __init__(
        self,
        own: pki.Identity,
        metrics: AuthzMetrics,
        policy: Mapping[str, Mapping[str, frozenset[str]]] = POLICY,
    ) -> None:
        self.own = own
        self.metrics = metrics
        self.policy = policy
        self._log_lock = threading.Lock()
        self._last_logged: dict[tuple[str, str, str], float] = {}

    def decide(self, full_method: str, auth_context: Mapping[str, Any]) -> Decision:
        service, _, method = full_method.lstrip("/").partition("/")
        caller = caller_identity(auth_context)
        if caller is None:
            reason = "no_identity" if auth_context.get("x509_pem_cert") else "no_certificate"
            return Decision(False, None, grpc.StatusCode.UNAUTHENTICATED, reason)
        if (caller.namespace, caller.cluster) != (self.own.namespace, self.own.cluster):
            return Decision(False, caller, grpc.StatusCode.PERMISSION_DENIED, "wrong_cluster")
        allowed = self.policy.get(service, {}).get(method)
        if allowed is None:
            return Decision(False, caller, grpc.StatusCode.PERMISSION_DENIED, "unlisted_method")
        if caller.role not in allowed:
            return Decision(False, caller, grpc.StatusCode.PERMISSION_DENIED, "wrong_role")
        return Decision(True, caller)

    def refused(self, full_method: str, decision: Decision, peer: str) -> str:
        """Count and log a refusal; returns the status message for the caller."""
        service, _, method = full_method.lstrip("/").partition("/")
        self.metrics.denied.labels(service, method, decision.reason).inc()
        who = decision.caller.uri if decision.caller else "no DualPath identity"
        message = f"{method}: caller {who} refused ({decision.reason})"
        # A flood of refused calls must not flood the log: one line per second per kind.
        key = (full_method, decision.reason, who)
        now = time.monotonic()
        with self._log_lock:
            if now - self._last_logged.get(key, -1e9) >= 1.0:
                if len(self._last_logged) > LOG_KEYS_MAX:
                    self._last_logged.clear()
                self._last_logged[key] = now
                log.warning(
                    "gRPC call refused",
                    extra={
                        "method": full_method,
                        "reason": decision.reason,
                        "caller": who,
                        "peer": peer,
                        "code": decision.code.name,
                    },
                )
        return message


def _wrap_handler(handler: Any, wrap: Callable[[Any], Any]) -> Any:
    """The same RpcMethodHandler with its behaviour (whichever of the four is set) wrapped;
    grpc's handlers are namedtuples."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return handler._replace(**{kind: wrap(behavior)})
    return handler


class AuthzInterceptor(grpc.ServerInterceptor):
    """For grpc.server (thread pool): abort() raises, so one wrapper fits all four kinds."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        authorizer = self.authorizer

        def wrap(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                decision = authorizer.decide(method, context.auth_context())
                if not decision.allowed:
                    message = authorizer.refused(method, decision, context.peer())
                    context.abort(decision.code, message)
                return behavior(request, context)

            return guarded

        return _wrap_handler(handler, wrap)  # type: ignore[no-any-return]


class AioAuthzInterceptor(grpc.aio.ServerInterceptor):
    """For grpc.aio: the wrapper must be the same kind of callable as the handler (grpc.aio
    dispatches on coroutine function / async generator function / plain function)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        authorizer = self.authorizer

        def check(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[grpc.StatusCode, str]:
            decision = authorizer.decide(method, context.auth_context())
            if decision.allowed:
                return grpc.StatusCode.OK, ""
            return decision.code, authorizer.refused(method, decision, context.peer())

        def wrap(behavior: Callable[..., Any]) -> Any:
            if inspect.isasyncgenfunction(behavior):

                async def guarded_stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    code, message = check(context)
                    if code is not grpc.StatusCode.OK:
                        await context.abort(code, message)
                    async for response in behavior(request, context):
                        yield response

                return guarded_stream
            if inspect.iscoroutinefunction(behavior):

                async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    code, message = check(context)
                    if code is not grpc.StatusCode.OK:
                        await context.abort(code, message)
                    return await behavior(request, context)

                return guarded

            # A plain function would run in grpc.aio's thread pool, where abort() cannot be
            # awaited; no servicer here has one. Fail closed (the call ends UNKNOWN).
            raise TypeError(f"{method}: grpc.aio handlers must be async to be authorized")

        return _wrap_handler(handler, wrap)  # type: ignore[no-any-return]
