"""A decode agent dies under a DE_READ load, in a cluster with a real traffic controller:
the prefill agent finishes the load from its own storage and tells the controller, which
drains the dead node's engine at once (its liveness timeout here is a minute) and takes it
back when a restarted agent reports again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import expected_region
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout
from dualpath_controller.client import ControllerClient
from dualpath_controller.process import ControllerProcess

from tests.support.background_load import BackgroundDeRead
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(180)
LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)


def chain_for(seed: int, blocks: int) -> list[ChainedBlock]:
    tokens = np.random.default_rng(seed).integers(0, 100_000, blocks * 64)
    return block_chain(tokens, 64, parent=root_hash("failover"))


def drain_reasons(client: ControllerClient) -> dict[str, str]:
    return {e.engine.engine_id: e.drain_reason for e in client.status().engines}


@pytest.fixture
def controller() -> Iterator[ControllerClient]:
    with (
        ControllerProcess(liveness_timeout_s=60, report_interval_ms=100) as proc,
        ControllerClient(proc.target) as client,
    ):
        client.wait_ready()
        yield client


def agent(
    work: Path, node: str, role: str, controller: ControllerClient, *extra: str
) -> AgentHandle:
    return start_agent(
        node,
        role,
        work / "store",
        work,
        ["--controller", controller.target, "--engine", f"{node}/e0", *extra],
    )


def test_the_prefill_agent_falls_back_and_reports_the_dead_decode_agent(tmp_path, controller):
    pe = agent(tmp_path, "pe", "prefill", controller)
    # 10 MB/s: a 16 MiB read takes ~1.6 s, long enough to kill the agent mid-load.
    de = agent(tmp_path, "de", "decode", controller, "--snic-read-gbps", "0.08")
    restarted: AgentHandle | None = None
    try:
        wait_for(
            "both engines registered and in service",
            lambda: drain_reasons(controller) == {"pe/e0": "", "de/e0": ""},
            30,
            lambda: None,
        )
        chain = chain_for(7, 64)
        de.client().seed_synthetic(chain, LAYOUT)
        load = BackgroundDeRead(
            pe.client(), "r1", chain, LAYOUT, de.endpoint, release_after_load=False
        )
        de_client = de.client()
        wait_for(
            "the slow read", lambda: de_client.stat().snic_inflight_bytes > 0, 20, lambda: None
        )
        de.kill()
        ended = load.join(60)
        assert ended and not load.errors, load.errors and load.errors[0].details()
        (result,) = load.results
        assert result.fallback_blocks == len(chain) and de.endpoint in result.fallback_reason
        assert pe.client().read_region("r1") == expected_region(chain, LAYOUT)
        # Told by the prefill agent, not found out by the liveness timeout (a minute).
        wait_for(
            "the dead node's engine drained as agent-failed",
            lambda: drain_reasons(controller)["de/e0"] == "agent-failed",
            5,
            lambda: None,
        )
        assert drain_reasons(controller)["pe/e0"] == ""
        # The node's agent comes back (same port, as a restarted pod): its reports return it.
        restarted = agent(tmp_path, "de", "decode", controller, "--listen", de.endpoint)
        wait_for(
            "the restarted agent's engine back in service",
            lambda: drain_reasons(controller)["de/e0"] == "",
            15,
            lambda: None,
        )
    finally:
        for handle in (pe, de, restarted):
            if handle is not None:
                handle.stop()
