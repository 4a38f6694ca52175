"""The explicitly selected fallback transport with QoS, and load reports to the real traffic
controller process."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from dualpath.v1 import traffic_controller_pb2 as tc
from dualpath.v1 import traffic_controller_pb2_grpc as tc_grpc
from dualpath_agent import kvgen
from dualpath_agent.blockhash import block_chain
from dualpath_agent.client import ReadPath, expected_region
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout
from dualpath_controller.process import ControllerProcess

from tests.support.wait import wait_for

LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)
QOS = ["--traffic-class", "106", "--service-level", "3", "--dscp", "26"]


def chain_for(seed: int, blocks: int, extra: int = 0):  # type: ignore[no-untyped-def]
    tokens = np.random.default_rng(seed).integers(0, 100_000, blocks * 64 + extra)
    return block_chain(tokens, 64, include_partial=True)


@pytest.fixture(scope="module")
def fallback_pair(tmp_path_factory) -> Iterator[tuple[AgentHandle, AgentHandle]]:
    work = tmp_path_factory.mktemp("fallback")
    agents: list[AgentHandle] = []
    try:
        for node, role in (("fb-pe", "prefill"), ("fb-de", "decode")):
            agents.append(
                start_agent(node, role, work / "store", work, ["--transport", "fallback", *QOS])
            )
        yield agents[0], agents[1]
    finally:
        for a in agents:
            a.stop()


def test_fallback_is_explicit_and_visible_everywhere(fallback_pair):
    pe = fallback_pair[0]
    stat = pe.client().stat()
    assert stat.peer_transport == "fallback-tcp" and stat.storage_transport == "fallback-pread"
    assert "--transport fallback" in stat.fallback_reason
    assert stat.qos_applied["UCX_IB_TRAFFIC_CLASS"] == "106"
    assert stat.qos_applied["UCX_IB_SL"] == "3"
    assert stat.qos_applied["IP_TOS"].startswith("0x68")  # DSCP 26 on the data sockets
    metrics = urllib.request.urlopen(f"http://{pe.metrics_address}/metrics", timeout=5).read()
    assert b"dualpath_agent_fallback_active 1.0" in metrics
    assert b'peer="fallback-tcp"' in metrics
    log = pe.log_path.read_text()
    assert "fallback transport selected explicitly" in log


@pytest.mark.parametrize("path", [ReadPath.DE_READ, ReadPath.SPLIT])
def test_fallback_moves_verified_bytes_and_merges(fallback_pair, path):
    pe, de = (a.client() for a in fallback_pair)
    chain = chain_for(int(path), 22, extra=5)
    prefix, new_full, tail = chain[:20], chain[20:22], chain[22]
    de.seed_synthetic(prefix, LAYOUT)
    rid = f"fb-{path.name}"
    missed = 2 * 64 + tail.tokens
    pe.load(
        rid,
        prefix,
        LAYOUT,
        path,
        decode_endpoint=fallback_pair[1].endpoint,
        missed_tokens=missed,
        release_after_load=False,
        keep_for_merge=True,
    )
    region = pe.read_region(rid)
    stride = (20 * 64 + missed) * LAYOUT.bytes_per_token_layer
    prefix_len = 20 * 64 * LAYOUT.bytes_per_token_layer
    for layer in range(LAYOUT.layers):
        got = region[layer * stride : layer * stride + prefix_len]
        assert got == expected_region(prefix, LAYOUT, layer)
    reply = pe.commit(rid, missed, new_full)
    assert reply.blocks_persisted == 2
    for b in new_full:
        assert de.read_block(b.block_hash) == kvgen.block_bytes(b.block_hash, LAYOUT, 64)
    de.release(rid)


def test_nixl_and_fallback_agents_refuse_each_other_clearly(fallback_pair, tmp_path):
    nixl_pe = start_agent("nixl-pe", "prefill", tmp_path / "store", tmp_path)
    try:
        chain = chain_for(7, 2)
        fallback_pair[1].client().seed_synthetic(chain, LAYOUT)
        with pytest.raises(grpc.RpcError) as err:
            nixl_pe.client().load(
                "mix", chain, LAYOUT, ReadPath.DE_READ, decode_endpoint=fallback_pair[1].endpoint
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "fallback-tcp" in err.value.details()
        assert nixl_pe.client().health().serving
    finally:
        nixl_pe.stop()


def test_agent_reports_its_read_queue_to_the_traffic_controller(tmp_path):
    with ControllerProcess(
        metrics_port=-1, report_interval_ms=100, log_path=tmp_path / "controller.log"
    ) as controller:
        _check_reports(controller.target, tmp_path)


def _check_reports(endpoint: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    agent = None
    try:
        agent = start_agent(
            "report-node",
            "decode",
            tmp_path / "store",
            tmp_path,
            [
                "--controller",
                endpoint,
                "--engine",
                "report-node/gpu0",
                "--engine",
                "report-node/gpu1",
                "--snic-read-gbps",
                "0.08",
            ],
        )
        stub = tc_grpc.TrafficControllerStub(grpc.insecure_channel(endpoint))

        def engines() -> dict[str, tc.EngineStatus]:
            status = stub.GetStatus(tc.StatusRequest(), timeout=5)
            return {e.engine.engine_id: e for e in status.engines}

        def both() -> dict[str, tc.EngineStatus] | None:
            found = engines()
            return found if len(found) >= 2 else None

        found = wait_for("both engines registered", both, 15)
        assert set(found) == {"report-node/gpu0", "report-node/gpu1"}
        engine = found["report-node/gpu0"].engine
        assert engine.node == "report-node" and engine.agent_endpoint == agent.endpoint
        assert engine.role == tc.EngineRole.ENGINE_ROLE_DECODE
        assert engine.snic_read_bytes_per_s == pytest.approx(10e6)
        # A capped read on the agent shows up in the controller's view of the node.
        chain = chain_for(9, 48)
        client = agent.client()
        client.seed_synthetic(chain, LAYOUT)
        peer = start_agent("report-pe", "prefill", tmp_path / "store", tmp_path)
        try:
            t = threading.Thread(
                target=peer.client().load,
                args=("reported", chain, LAYOUT, ReadPath.DE_READ),
                kwargs={"decode_endpoint": agent.endpoint},
            )
            t.start()

            def queued_report() -> tc.LoadReport | None:
                report = engines()["report-node/gpu0"].last_report
                return report if report.read_queue_length else None

            report = wait_for("the read queued in the node's report", queued_report, 10)
            t.join(30)
        finally:
            peer.stop()
        assert report.read_queue_length == 1
        assert report.read_queue_bytes > 0 and report.read_queue_tokens > 0
    finally:
        if agent is not None:
            agent.stop()


def test_an_agent_with_no_engines_registers_no_placeholder(tmp_path):
    """Under spec.engines a router registers the node's real engines: the agent must not add
    a placeholder the controller could schedule on."""
    with ControllerProcess(
        metrics_port=-1, report_interval_ms=100, log_path=tmp_path / "controller.log"
    ) as controller:
        stub = tc_grpc.TrafficControllerStub(grpc.insecure_channel(controller.target))
        with_placeholder = start_agent(
            "plain-node", "prefill", tmp_path / "s1", tmp_path, ["--controller", controller.target]
        )
        quiet = start_agent(
            "quiet-node",
            "prefill",
            tmp_path / "s2",
            tmp_path,
            ["--controller", controller.target, "--no-engines"],
        )
        try:

            def nodes() -> set[str] | None:
                status = stub.GetStatus(tc.StatusRequest(), timeout=5)
                found = {e.engine.node for e in status.engines}
                return found if "plain-node" in found else None

            # The control: the same agent without the flag registers its placeholder.
            assert "quiet-node" not in wait_for("the placeholder registered", nodes, 15)
            # An absence: both agents started together and five report intervals have
            # passed since the placeholder came, so a registration would be there by now.
            time.sleep(0.5)
            assert "quiet-node" not in (nodes() or set())
        finally:
            quiet.stop()
            with_placeholder.stop()
