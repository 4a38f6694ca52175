"""Mutual TLS and caller authorization with real processes on loopback: a traffic controller
and two agents (one prefill, one decode node, sharing one store directory), each serving
with an identity directory from one throwaway cluster CA; the agents report to the
controller with their own identity. Callers without a certificate, with one of another CA
or of another cluster are refused; a router-role caller may look blocks up but not move
KV; agent- and engine-role callers are served; a DE_READ load between the two agents runs
over mutual TLS and delivers every byte; refusals are counted on /metrics; the components
refuse to start without an explicit choice (--tls-dir or --insecure); `dualpath router`
with a router identity registers its engines, looks prefixes up and schedules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from dualpath.v1 import agent_pb2, agent_pb2_grpc
from dualpath.v1 import traffic_controller_pb2 as tc
from dualpath.v1 import traffic_controller_pb2_grpc as tc_grpc
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient, ReadPath, expected_region
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout
from dualpath_common import pki, tls
from dualpath_controller.client import ControllerClient, ControllerSession
from dualpath_controller.process import ControllerProcess
from dualpath_router.process import RouterProcess

from tests.support.metrics import sample_value
from tests.support.recording_engine import RecordingEngine
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(180)

LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)
NS, CLUSTER = "team-a", "dp1"


@dataclass
class Mesh:
    ids: dict[str, tls.IdentityDir]
    root: Path
    controller: ControllerProcess
    prefill: AgentHandle
    decode: AgentHandle


def _issue(ca: pki.CertificateAuthority, root: Path, name: str, role: str, **kw: str) -> Path:
    return pki.issue_identity_dir(
        ca, root / name, role, kw.get("namespace", NS), kw.get("cluster", CLUSTER)
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mtls")
    ca = pki.new_ca("dp1 cluster CA")
    dirs = {
        name: _issue(ca, root, name, role)
        for name, role in (
            ("agent-pe", "agent"),
            ("agent-de", "agent"),
            ("controller", "controller"),
            ("engine", "engine"),
            ("router", "router"),
            ("agent", "agent"),
        )
    }
    # Same CA, another DualPathCluster: its certificate verifies, its id does not fit.
    dirs["other-cluster"] = _issue(ca, root, "other-cluster", "engine", cluster="dp2")
    # Another CA: trusts ours (so only the server's check can refuse it).
    stranger_ca = pki.new_ca("stranger CA")
    cert, key = pki.issue(stranger_ca, "engine", NS, CLUSTER)
    dirs["stranger"] = pki.write_identity_dir(
        root / "stranger", ca.cert_pem + stranger_ca.cert_pem, cert, key
    )
    ids = {name: tls.IdentityDir.load(d) for name, d in dirs.items()}
    work = root / "work"
    controller = ControllerProcess(report_interval_ms=100, tls_dir=dirs["controller"]).start()
    agents: list[AgentHandle] = []
    try:
        for node, role, name in (
            ("pe-node", "prefill", "agent-pe"),
            ("de-node", "decode", "agent-de"),
        ):
            reports = ["--controller", controller.target, "--engine", f"{node}/gpu0"]
            agents.append(
                start_agent(
                    node,
                    role,
                    work / "store",
                    work,
                    reports,
                    buffer_bytes="96MiB",
                    tls_dir=dirs[name],
                )
            )
        yield Mesh(ids, root, controller, agents[0], agents[1])
    finally:
        for agent in agents:
            agent.stop()
        controller.stop()


def _chain(seed: int, blocks: int) -> list[ChainedBlock]:
    tokens = np.random.default_rng(seed).integers(0, 100_000, blocks * 64)
    return block_chain(tokens, 64, parent=root_hash("mtls-test"))


def _code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()  # type: ignore[no-any-return]


def _agent_stub(
    mesh: Mesh, who: str, endpoint: str
) -> tuple[grpc.Channel, agent_pb2_grpc.AgentStub]:
    channel = tls.channel(endpoint, identity=mesh.ids[who], server_role="agent")
    return channel, agent_pb2_grpc.AgentStub(channel)


def _metric(address: str, name: str, labels: dict[str, str]) -> float:
    """Sum of the series with these labels; raises when the metric is not exported."""
    return sample_value(httpx.get(f"http://{address}/metrics", timeout=5).text, name, labels)


def test_agents_report_to_the_controller_over_mutual_tls(mesh):
    with ControllerClient(mesh.controller.target, identity=mesh.ids["engine"]) as client:

        def both() -> set[str] | None:
            engines = {e.engine.engine_id for e in client.status().engines}
            return engines if len(engines) >= 2 else None

        engines = wait_for("both agents' engines", both, 30)
    assert engines == {"pe-node/gpu0", "de-node/gpu0"}, mesh.prefill.log_tail()
    assert mesh.prefill.info["tls"] == "mtls"
    assert mesh.prefill.info["identity"] == pki.spiffe_id(NS, CLUSTER, "agent")


def test_callers_without_a_certificate_are_refused(mesh):
    for endpoint in (mesh.prefill.endpoint, mesh.controller.target):
        with grpc.insecure_channel(endpoint) as plaintext:
            stub = agent_pb2_grpc.AgentStub(plaintext)
            code = _code(lambda s=stub: s.Health(agent_pb2.HealthRequest(), timeout=3))
            assert code is grpc.StatusCode.UNAVAILABLE, endpoint
    # TLS that trusts the cluster CA but presents no client certificate: the handshake fails.
    anonymous = tls.channel(
        mesh.prefill.endpoint,
        mesh.root / "engine" / "ca.crt",
        options=[("grpc.ssl_target_name_override", pki.role_dns_name("agent"))],
    )
    stub = agent_pb2_grpc.AgentStub(anonymous)
    assert (
        _code(lambda: stub.Health(agent_pb2.HealthRequest(), timeout=3))
        is grpc.StatusCode.UNAVAILABLE
    )
    anonymous.close()
    with ControllerClient(mesh.controller.target, timeout_s=3) as client:
        assert _code(client.status) is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_another_ca_is_refused(mesh):
    with AgentClient(mesh.prefill.endpoint, 3, identity=mesh.ids["stranger"]) as client:
        assert _code(client.health) is grpc.StatusCode.UNAVAILABLE
    with ControllerClient(mesh.controller.target, timeout_s=3, identity=mesh.ids["stranger"]) as c:
        assert _code(c.status) is grpc.StatusCode.UNAVAILABLE


def test_another_clusters_identity_is_denied(mesh):
    with AgentClient(mesh.decode.endpoint, 5, identity=mesh.ids["other-cluster"]) as client:
        assert _code(client.health) is grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: client.lookup([b"\0" * 16])) is grpc.StatusCode.PERMISSION_DENIED
    labels = {"method": "Health", "reason": "wrong_cluster"}
    assert _metric(mesh.decode.metrics_address, "dualpath_authz_denied_total", labels) >= 1


def test_a_router_may_look_up_but_not_move_kv(mesh):
    chain = _chain(seed=1, blocks=4)
    with AgentClient(mesh.decode.endpoint, 30, identity=mesh.ids["engine"]) as engine:
        engine.seed_synthetic(chain, LAYOUT)
    channel, stub = _agent_stub(mesh, "router", mesh.decode.endpoint)
    with channel:
        lookup = stub.Lookup(
            agent_pb2.LookupRequest(block_hashes=[b.block_hash for b in chain]), timeout=5
        )
        assert lookup.prefix_blocks == 4
        assert stub.Stat(agent_pb2.StatRequest(), timeout=5).role == "decode"
        refused = {
            "PutBlocks": lambda: stub.PutBlocks(iter([agent_pb2.BlockChunk()]), timeout=5),
            "ServeLayers": lambda: list(
                stub.ServeLayers(agent_pb2.ServeLayersRequest(), timeout=5)
            ),
            "Commit": lambda: stub.Commit(agent_pb2.CommitRequest(), timeout=5),
            "Merge": lambda: stub.Merge(agent_pb2.MergeRequest(), timeout=5),
            "Load": lambda: list(stub.Load(agent_pb2.LoadRequest(), timeout=5)),
            "ReadBlock": lambda: list(stub.ReadBlock(agent_pb2.ReadBlockRequest(), timeout=5)),
        }
        for method, call in refused.items():
            assert _code(call) is grpc.StatusCode.PERMISSION_DENIED, method
    for method in refused:
        labels = {"service": "dualpath.v1.Agent", "method": method, "reason": "wrong_role"}
        assert _metric(mesh.decode.metrics_address, "dualpath_authz_denied_total", labels) >= 1
    mode = _metric(mesh.decode.metrics_address, "dualpath_grpc_security_mode", {"mode": "mtls"})
    assert mode == 1


def test_agent_and_engine_callers_are_served(mesh):
    chain = _chain(seed=2, blocks=3)
    for who in ("engine", "agent"):
        with AgentClient(mesh.decode.endpoint, 30, identity=mesh.ids[who]) as client:
            client.seed_synthetic(chain, LAYOUT)  # PutBlocks
            assert client.lookup(chain)[0] == 3
            assert len(client.read_block(chain[0].block_hash)) > 0  # ReadBlock


def test_de_read_load_between_agents_over_mutual_tls(mesh):
    chain = _chain(seed=3, blocks=12)
    with (
        AgentClient(mesh.decode.endpoint, 60, identity=mesh.ids["engine"]) as de,
        AgentClient(mesh.prefill.endpoint, 60, identity=mesh.ids["engine"]) as pe,
    ):
        de.seed_synthetic(chain, LAYOUT)
        result = pe.load(
            "mtls-de-read",
            chain,
            LAYOUT,
            ReadPath.DE_READ,
            decode_endpoint=mesh.decode.endpoint,
            release_after_load=False,
        )
        try:
            total = sum(b.tokens for b in chain) * LAYOUT.layers * LAYOUT.bytes_per_token_layer
            assert result.bytes_total == total and result.bytes_from_peer == total
            assert result.blocks_verified == len(chain)
            for layer in range(LAYOUT.layers):
                got = pe.read_region("mtls-de-read", layer=layer)
                assert got == expected_region(chain, LAYOUT, layer), f"layer {layer} differs"
        finally:
            pe.release("mtls-de-read")


def test_controller_authorizes_by_role(mesh):
    target = mesh.controller.target
    with ControllerClient(target, identity=mesh.ids["router"]) as router:
        router.wait_ready(10)
        reply = router.schedule("mtls-1", 1_000, 900, 100)
        assert reply.assignment.request_id == "mtls-1"
        assert router.complete("mtls-1")
    with ControllerSession(target, identity=mesh.ids["engine"]) as session:
        assert session.schedule("mtls-2", 1_000, 900, 100).assignment.request_id == "mtls-2"
        assert session.complete("mtls-2")
    with ControllerClient(target, identity=mesh.ids["agent"], timeout_s=5) as agent:
        assert agent.status().policy  # GetStatus: any identity of the cluster
        assert _code(lambda: agent.schedule("mtls-3", 1_000, 900, 100)) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        stub = tc_grpc.TrafficControllerStub(agent.channel)
        watch = stub.WatchStatus(tc.WatchStatusRequest(interval_ms=100), timeout=5)
        assert next(iter(watch)).policy
        watch.cancel()
    address = f"127.0.0.1:{mesh.controller.metrics_port}"
    labels = {
        "service": "dualpath.v1.TrafficController",
        "method": "Schedule",
        "reason": "wrong_role",
    }
    assert _metric(address, "dualpath_authz_denied_total", labels) >= 1
    assert _metric(address, "dualpath_grpc_security_mode", {"mode": "mtls"}) == 1


def test_components_refuse_to_start_without_an_explicit_choice(tmp_path):
    base = [sys.executable, "-m", "dualpath_cli.main"]
    commands = {
        "agent": [
            *base,
            "agent",
            "--node",
            "x",
            "--role",
            "decode",
            "--store",
            str(tmp_path / "s"),
        ],
        "controller": [*base, "controller", "--metrics-port", "-1", "--listen", "127.0.0.1:0"],
    }
    for name, command in commands.items():
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (name, result.stderr)
        assert "--tls-dir DIR" in result.stderr and "--insecure" in result.stderr, name


def test_router_process_over_mutual_tls(mesh):
    """A router with its own controller (the mesh's agents report engines the router does
    not front), the mesh's agents for Lookup/Stat, and recording engine doubles."""
    prompt = [(i * 7) % 1000 for i in range(200)]
    chain = block_chain(prompt, 64, parent=root_hash("mtls-router"))
    with AgentClient(mesh.prefill.endpoint, 30, identity=mesh.ids["engine"]) as engine:
        engine.seed_synthetic(chain[:2], LAYOUT)
    with (
        RecordingEngine("prefill-0") as prefill,
        RecordingEngine("decode-0") as decode,
        ControllerProcess(report_interval_ms=100, tls_dir=mesh.ids["controller"].path) as ctl,
        RouterProcess(
            controller=ctl.target,
            engines=[
                f"id=prefill-0,role=prefill,url={prefill.url},node=pe-node,"
                f"agent={mesh.prefill.endpoint}",
                f"id=decode-0,role=decode,url={decode.url},node=de-node,"
                f"agent={mesh.decode.endpoint}",
            ],
            hash_namespace="mtls-router",
            tls_dir=mesh.ids["router"].path,
        ) as router,
    ):
        assert "--insecure" not in router.args
        wait_for(
            "router /healthz 200",
            lambda: httpx.get(f"{router.url}/healthz").status_code == 200,
            30,
            lambda: None,
        )
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 3, "temperature": 0}
        response = httpx.post(f"{router.url}/v1/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-dualpath-cached-tokens"] == str(2 * 64)  # Lookup at the agent
        assert len(prefill.completions()) == len(decode.completions()) == 1
    labels = {"service": "dualpath.v1.Agent", "reason": "wrong_role", "method": "Lookup"}
    assert _metric(mesh.prefill.metrics_address, "dualpath_authz_denied_total", labels) == 0
