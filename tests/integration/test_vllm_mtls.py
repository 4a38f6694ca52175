"""DualPathConnector in a real vLLM (CPU) engine over mutual TLS: the agent serves only
callers with a certificate of the cluster CA, the connector (`tls_dir` in
kv_connector_extra_config) calls it with an engine identity. Turn 1 persists the prompt's
blocks (PutBlocks), turn 2 looks them up and loads them (Lookup, Load) and answers exactly
as a reference engine that recomputes everything; the agent refused nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.client import AgentClient
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_common import pki, tls
from dualpath_vllm.config import ConnectorConfig, kv_transfer_config
from dualpath_vllm.process import EngineProcess, EngineSpec, start_engines, stop_engines
from dualpath_vllm.reference import compare_runs, greedy_completion

from tests.support.engines import tiny_model
from tests.support.localkube import free_port

BLOCK = 64


@dataclass
class Rig:
    agent: AgentHandle
    engine: EngineProcess
    reference: EngineProcess
    client_identity: tls.IdentityDir
    namespace: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("vllm-mtls")
    ca = pki.new_ca("vllm mtls CA")
    agent_dir = pki.issue_identity_dir(ca, work / "agent", "agent", "ns", "dp")
    engine_dir = pki.issue_identity_dir(ca, work / "engine", "engine", "ns", "dp")
    model = tiny_model()
    agent = start_agent("node", "decode", work / "store", work, tls_dir=agent_dir)
    engines: list[EngineProcess] = []
    try:
        no_cache = ["--no-enable-prefix-caching"]
        transfer = kv_transfer_config(agent.endpoint, "engine", tls_dir=str(engine_dir))
        assert ConnectorConfig.from_extra(transfer["kv_connector_extra_config"], "x").tls_dir
        specs = [
            EngineSpec(
                model,
                free_port(),
                engine_id="engine",
                kv_transfer_config=transfer,
                extra_args=no_cache,
            ),
            EngineSpec(model, free_port(), engine_id="reference", extra_args=no_cache),
        ]
        engines = start_engines(specs)
        yield Rig(agent, engines[0], engines[1], tls.IdentityDir.load(engine_dir), str(model))
    finally:
        stop_engines(engines)
        agent.stop()


def test_connector_persists_and_loads_over_mutual_tls(rig):
    base = [int(t) for t in np.random.default_rng(5).integers(10, 1000, 6 * BLOCK)]
    first = greedy_completion(rig.engine.base_url, base, 8)
    assert compare_runs(first, greedy_completion(rig.reference.base_url, base, 8)).tokens_equal
    chain = block_chain(base, BLOCK, parent=root_hash(rig.namespace))
    with AgentClient(rig.agent.endpoint, 10, identity=rig.client_identity) as client:
        assert client.lookup(chain)[0] == 6  # PutBlocks from the connector
        reads_before = client.stat().storage_reads_completed
        turn2 = base + [int(t) for t in np.random.default_rng(6).integers(10, 1000, 40)]
        got = greedy_completion(rig.engine.base_url, turn2, 8)
        diff = compare_runs(got, greedy_completion(rig.reference.base_url, turn2, 8))
        assert diff.tokens_equal and diff.logprobs_close, str(diff)
        assert client.stat().storage_reads_completed > reads_before  # a Load from storage
    text = httpx.get(f"http://{rig.agent.metrics_address}/metrics", timeout=5).text
    denied = [line for line in text.splitlines() if line.startswith("dualpath_authz_denied_total{")]
    assert all(line.endswith(" 0.0") for line in denied), denied
    assert 'dualpath_grpc_security_mode{mode="mtls"} 1.0' in text
