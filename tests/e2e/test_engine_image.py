"""The engine image, as an engine pod runs it: hack/image-build.sh with DUALPATH_IMAGE_ENGINE=1
(vLLM's CPU build, NIXL and the DualPath connector, built offline with buildah, layers
cached) serves the tiny model from a container, with the connector pointed at a real agent
on loopback. Its greedy tokens must equal those of the same model in the engines' venv (no
connector, recomputing), turn 1 must leave its KV blocks in the agent's store, and turn 2
with the same prefix must load them back through the agent. The tiny model's answers depend
on its context, and KV of another prompt changes them (the negative control in
tests/integration/test_vllm_connector.py, same model and connector), so equal tokens after a
load mean the loaded KV was right."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_vllm.config import kv_transfer_config
from dualpath_vllm.process import EngineProcess, EngineSpec
from dualpath_vllm.reference import compare_runs, greedy_completion

from tests.support.engine_image import MODEL_MOUNT, ContainerEngine, world_readable_copy
from tests.support.engines import tiny_model
from tests.support.localcluster import build_images
from tests.support.localkube import free_port

BLOCK = 64
TOKENS_OUT = 8


@dataclass
class Rig:
    agent: AgentHandle
    image_engine: ContainerEngine
    reference: EngineProcess
    image: dict[str, str]


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("engine-image")
    image = build_images(engine=True)["engine"]
    model = tiny_model()
    agent = start_agent("node-0", "prefill", work / "store", work)
    image_engine = reference = None
    try:
        image_engine = ContainerEngine(
            EngineSpec(
                Path(MODEL_MOUNT),
                free_port(),
                engine_id="image",
                kv_transfer_config=kv_transfer_config(agent.endpoint, "image"),
                extra_args=["--no-enable-prefix-caching"],
            ),
            image["local"],
            world_readable_copy(model, work),
            work / "image-engine.log",
        ).start()
        reference = EngineProcess(
            EngineSpec(model, free_port(), engine_id="reference"), work / "reference.log"
        ).start()
        image_engine.wait_ready(300)
        reference.wait_ready(300)
        yield Rig(agent, image_engine, reference, image)
    finally:
        for engine in (image_engine, reference):
            if engine is not None:
                engine.stop()
        if image_engine is not None:
            image_engine.remove()
        agent.stop()


def prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(10, 1000, n)]


def reads(agent: AgentHandle) -> int:
    with agent.client() as client:
        return client.stat().storage_reads_completed


def test_the_engine_image_serves_with_the_connector_and_loads_kv_through_the_agent(rig):
    base = prompt(seed=61, n=6 * BLOCK)
    got = greedy_completion(rig.image_engine.base_url, base, TOKENS_OUT)
    want = greedy_completion(rig.reference.base_url, base, TOKENS_OUT)
    diff = compare_runs(got, want)
    assert diff.tokens_equal and diff.logprobs_close, str(diff)
    # Turn 1 left its 6 full blocks in the agent's store (the connector in the image wrote
    # them over gRPC + NIXL from inside the container).
    chain = block_chain(base, BLOCK, parent=root_hash(str(MODEL_MOUNT), None))
    with rig.agent.client() as client:
        assert client.lookup(chain)[0] == 6
    # Turn 2 shares them: they come back through the agent, and the answer is unchanged.
    turn2 = base + prompt(seed=62, n=40)
    before = reads(rig.agent)
    got = greedy_completion(rig.image_engine.base_url, turn2, TOKENS_OUT)
    diff = compare_runs(got, greedy_completion(rig.reference.base_url, turn2, TOKENS_OUT))
    assert diff.tokens_equal and diff.logprobs_close, str(diff)
    assert reads(rig.agent) > before


def test_the_engine_image_archive_holds_the_vllm_layer(rig, capsys):
    """Prints the archive's size for the record; fails if it is implausibly small (a build
    that lost the vLLM layer: the archive is ~1.3 GB)."""
    archive = Path(rig.image["archive"])
    size = archive.stat().st_size
    with capsys.disabled():
        print(json.dumps({"engine_image": rig.image["ref"], "archive_bytes": size}))
    assert size > 500 * 2**20
