"""Caller authorization (dualpath_common.authz): the table covers every RPC, the decisions,
and both interceptor forms on loopback servers with mutual TLS (a fake servicer each)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from dualpath.v1 import agent_pb2, agent_pb2_grpc
from dualpath.v1 import traffic_controller_pb2 as tc
from dualpath.v1 import traffic_controller_pb2_grpc as tc_grpc
from dualpath_agent.client import AgentClient
from dualpath_common import authz, pki, tls
from prometheus_client import CollectorRegistry

OWN = pki.Identity("ns", "dp", "agent")


def _ctx(*uris: str, cert: bool = True) -> dict[str, list[bytes]]:
    context: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
    if cert:
        context["x509_pem_cert"] = [b"-----BEGIN CERTIFICATE-----"]
        context["peer_uri"] = [u.encode() for u in uris]
        context["x509_subject_alternative_name"] = [u.encode() for u in uris]
    return context


def _as(role: str, namespace: str = "ns", cluster: str = "dp") -> dict[str, list[bytes]]:
    return _ctx(pki.spiffe_id(namespace, cluster, role))


@pytest.fixture
def authorizer() -> authz.Authorizer:
    return authz.Authorizer(OWN, authz.AuthzMetrics(CollectorRegistry()))


@pytest.mark.parametrize(
    ("descriptor", "service"),
    [
        (agent_pb2.DESCRIPTOR.services_by_name["Agent"], authz.AGENT_SERVICE),
        (tc.DESCRIPTOR.services_by_name["TrafficController"], authz.CONTROLLER_SERVICE),
    ],
)
def test_every_rpc_has_exactly_one_entry(descriptor, service):
    assert descriptor.full_name == service
    rpcs = {m.name for m in descriptor.methods}
    assert set(authz.POLICY[service]) == rpcs
    for roles in authz.POLICY[service].values():
        assert roles and roles <= set(pki.ROLES)


def test_kv_moving_agent_calls_are_for_agents_and_engines_only(authorizer):
    moving = ["PutBlocks", "Commit", "Merge", "ServeLayers", "Load", "Release", "ReadBlock"]
    for method in [*moving, "ReadRegion"]:
        full = f"/dualpath.v1.Agent/{method}"
        for role in ("agent", "engine"):
            assert authorizer.decide(full, _as(role)).allowed, (method, role)
        for role in ("router", "controller", "operator", "client"):
            decision = authorizer.decide(full, _as(role))
            assert (decision.allowed, decision.code, decision.reason) == (
                False,
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_role",
            ), (method, role)
    assert authorizer.decide("/dualpath.v1.Agent/Lookup", _as("router")).allowed
    assert not authorizer.decide("/dualpath.v1.Agent/Lookup", _as("client")).allowed
    for method in ("Health", "Stat", "PeerInfo"):
        assert all(
            authorizer.decide(f"/dualpath.v1.Agent/{method}", _as(r)).allowed for r in pki.ROLES
        )


def test_controller_table(authorizer):
    def allowed(method: str) -> set[str]:
        full = f"/dualpath.v1.TrafficController/{method}"
        return {r for r in pki.ROLES if authorizer.decide(full, _as(r)).allowed}

    for method in ("Schedule", "Complete", "Cancel", "Session"):
        assert allowed(method) == {"router", "engine"}
    for method in ("RegisterEngine", "DeregisterEngine", "ReportLoad", "StreamLoad"):
        assert allowed(method) == {"agent", "engine", "router"}
    assert allowed("GetStatus") == allowed("WatchStatus") == set(pki.ROLES)
    assert allowed("NotAMethod") == set()


def test_unknown_callers_and_other_clusters_are_refused(authorizer):
    method = "/dualpath.v1.Agent/Health"
    cases = {
        "no_certificate": _ctx(cert=False),
        "no_identity": _ctx("spiffe://example.org/ns/ns/dpc/dp/agent"),
    }
    for reason, context in cases.items():
        decision = authorizer.decide(method, context)
        assert (decision.code, decision.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    # Two DualPath ids in one certificate: ambiguous, so no identity.
    two = _ctx(pki.spiffe_id("ns", "dp", "agent"), pki.spiffe_id("ns", "dp", "router"))
    assert authorizer.decide(method, two).code is grpc.StatusCode.UNAUTHENTICATED
    for other in (_as("agent", namespace="other"), _as("agent", cluster="other")):
        decision = authorizer.decide(method, other)
        assert (decision.code, decision.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "wrong_cluster",
        )


# ----- the interceptors on real (loopback) servers ------------------------------------------


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tls.IdentityDir]:
    root = tmp_path_factory.mktemp("ids")
    ca = pki.new_ca("authz test CA")
    out = {}
    for role in ("agent", "controller", "engine", "router"):
        out[role] = tls.IdentityDir.load(
            pki.issue_identity_dir(ca, Path(root / role), role, "ns", "dp")
        )
    return out


class FakeAgent(agent_pb2_grpc.AgentServicer):
    def Health(self, request, context):
        return agent_pb2.HealthResponse()

    def ReadBlock(self, request, context):
        yield agent_pb2.ReadBlockChunk(data=b"kv")


def _denied(registry: CollectorRegistry, service: str, method: str, reason: str) -> float:
    value = registry.get_sample_value(
        "dualpath_authz_denied_total", {"service": service, "method": method, "reason": reason}
    )
    return value or 0.0


def test_sync_interceptor_on_a_threaded_server(identities):
    registry = CollectorRegistry()
    metrics = authz.AuthzMetrics(registry)
    server = grpc.server(
        ThreadPoolExecutor(4),
        interceptors=[authz.AuthzInterceptor(authz.Authorizer(OWN, metrics))],
    )
    agent_pb2_grpc.add_AgentServicer_to_server(FakeAgent(), server)
    port = server.add_secure_port("127.0.0.1:0", identities["agent"].server_credentials())
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        for role, ok in (("engine", True), ("router", False)):
            with tls.channel(target, identity=identities[role], server_role="agent") as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                stub.Health(agent_pb2.HealthRequest(), timeout=5)  # any identity
                call = stub.ReadBlock(agent_pb2.ReadBlockRequest(), timeout=5)
                if ok:
                    assert [c.data for c in call] == [b"kv"]
                else:
                    with pytest.raises(grpc.RpcError) as info:
                        list(call)
                    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
                    assert "wrong_role" in (info.value.details() or "")
        assert _denied(registry, authz.AGENT_SERVICE, "ReadBlock", "wrong_role") == 1
    finally:
        server.stop(None)


class FakeController(tc_grpc.TrafficControllerServicer):
    async def GetStatus(self, request, context):
        return tc.ClusterStatus(policy="fake")

    async def Schedule(self, request, context):
        return tc.ScheduleResponse()

    async def WatchStatus(self, request, context):
        yield tc.ClusterStatus(policy="w1")


def test_aio_interceptor_wraps_coroutines_and_async_generators(identities):
    registry = CollectorRegistry()
    authorizer = authz.Authorizer(OWN, authz.AuthzMetrics(registry))

    async def scenario() -> None:
        server = grpc.aio.server(interceptors=[authz.AioAuthzInterceptor(authorizer)])
        tc_grpc.add_TrafficControllerServicer_to_server(FakeController(), server)
        creds = identities["controller"].server_credentials()
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            ch = tls.aio_channel(target, identity=identities["agent"], server_role="controller")
            async with ch:
                stub = tc_grpc.TrafficControllerStub(ch)
                assert (await stub.GetStatus(tc.StatusRequest(), timeout=5)).policy == "fake"
                watched = [s.policy async for s in stub.WatchStatus(tc.WatchStatusRequest())]
                assert watched == ["w1"]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Schedule(tc.ScheduleRequest(), timeout=5)
                assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            plain = grpc.aio.insecure_channel(target)
            async with plain:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await tc_grpc.TrafficControllerStub(plain).GetStatus(
                        tc.StatusRequest(), timeout=5
                    )
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # no handshake
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert _denied(registry, authz.CONTROLLER_SERVICE, "Schedule", "wrong_role") == 1


def test_a_ca_rotation_needs_no_restart_on_either_side(tmp_path):
    """Server: re-reads its pair and ca.crt on the next handshake. Client: remakes its
    channel when its identity files change (tls.RenewingChannel), so the next connection
    presents the new certificate."""
    old, new = pki.new_ca("old CA"), pki.new_ca("new CA")
    server_dir = pki.issue_identity_dir(old, tmp_path / "server", "agent", "ns", "dp")
    client_dir = pki.issue_identity_dir(old, tmp_path / "client", "engine", "ns", "dp")
    server_id = tls.IdentityDir.load(server_dir)
    server = grpc.server(
        ThreadPoolExecutor(4),
        interceptors=[
            authz.AuthzInterceptor(
                authz.Authorizer(server_id.identity, authz.AuthzMetrics(CollectorRegistry()))
            )
        ],
    )
    agent_pb2_grpc.add_AgentServicer_to_server(FakeAgent(), server)
    port = server.add_secure_port("127.0.0.1:0", server_id.server_credentials())
    server.start()
    target = f"127.0.0.1:{port}"
    client = AgentClient(target, 5, identity=tls.IdentityDir.load(client_dir))
    client._channels.check_s = 0.0  # check the files on every call
    old_client = tls.IdentityDir.load(
        pki.issue_identity_dir(old, tmp_path / "x", "engine", "ns", "dp")
    )
    try:
        client.health()
        # Step 1: both sides trust old + new; the client now holds a certificate of the new CA.
        bundle = old.cert_pem + new.cert_pem
        cert, key = pki.issue(old, "agent", "ns", "dp")
        pki.write_identity_dir(server_dir, bundle, cert, key)
        cert, key = pki.issue(new, "engine", "ns", "dp")
        pki.write_identity_dir(client_dir, bundle, cert, key)
        client.health()
        assert client._channels.renewals == 1
        # Step 2: the server drops the old CA and serves a certificate of the new one.
        cert, key = pki.issue(new, "agent", "ns", "dp")
        pki.write_identity_dir(server_dir, new.cert_pem, cert, key)
        with tls.channel(target, identity=old_client, server_role="agent") as stale:
            with pytest.raises(grpc.RpcError) as info:
                agent_pb2_grpc.AgentStub(stale).Health(agent_pb2.HealthRequest(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        with tls.channel(target, identity=client.identity, server_role="agent") as fresh:
            agent_pb2_grpc.AgentStub(fresh).Health(agent_pb2.HealthRequest(), timeout=5)
    finally:
        client.close()
        server.stop(None)


class SyncController(tc_grpc.TrafficControllerServicer):
    def GetStatus(self, request, context):
        return tc.ClusterStatus(policy="never served")


def test_aio_interceptor_fails_closed_on_a_sync_handler(identities):
    authorizer = authz.Authorizer(OWN, authz.AuthzMetrics(CollectorRegistry()))

    async def scenario() -> grpc.StatusCode:
        server = grpc.aio.server(interceptors=[authz.AioAuthzInterceptor(authorizer)])
        tc_grpc.add_TrafficControllerServicer_to_server(SyncController(), server)
        port = server.add_secure_port("127.0.0.1:0", identities["controller"].server_credentials())
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            ch = tls.aio_channel(target, identity=identities["engine"], server_role="controller")
            async with ch:
                try:
                    await tc_grpc.TrafficControllerStub(ch).GetStatus(tc.StatusRequest(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) is grpc.StatusCode.UNKNOWN
