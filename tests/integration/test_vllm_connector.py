"""DualPathConnector in real vLLM (CPU) engines, against a reference engine that has no
connector and recomputes everything.

A prefill agent and a decode agent share one store directory (the distributed store). Two
engines load through the connector: `prefill` (its node's agent is the prefill agent) and
`decode` (the decode agent); vLLM's own prefix cache is off in them, so every cache hit is
a DualPath load. Every check compares greedy tokens and their logprobs with the reference:
the tiny model's answers depend on the context (tests/integration/test_vllm_engine.py
shows it), and a planted wrong block is caught (the negative control)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout
from dualpath_vllm.config import kv_transfer_config
from dualpath_vllm.params import DualPathParams, ReadPathName, Role
from dualpath_vllm.process import EngineProcess, EngineSpec, start_engines, stop_engines
from dualpath_vllm.reference import Completion, compare_runs, greedy_completion

from tests.support.engines import tiny_model
from tests.support.localkube import free_port
from tests.support.wait import wait_for

BLOCK = 64
TOKENS_OUT = 12


@dataclass
class Rig:
    prefill_agent: AgentHandle
    decode_agent: AgentHandle
    prefill: EngineProcess
    decode: EngineProcess
    reference: EngineProcess
    # Same node as `prefill`, load_mode "async": vLLM parks a request until its load landed.
    prefill_async: EngineProcess
    model: Path
    namespace: str
    workdir: Path

    def chain(self, tokens: list[int], cache_salt: str | None = None) -> list[ChainedBlock]:
        return block_chain(tokens, BLOCK, parent=root_hash(self.namespace, cache_salt))


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("vllm-connector")
    model = tiny_model()
    store = work / "store"
    agents: list[AgentHandle] = []
    engines: list[EngineProcess] = []
    try:
        agents.append(start_agent("pe-node", "prefill", store, work, buffer_bytes="64MiB"))
        agents.append(start_agent("de-node", "decode", store, work, buffer_bytes="64MiB"))
        no_cache = ["--no-enable-prefix-caching"]
        specs = [
            EngineSpec(
                model,
                free_port(),
                engine_id="prefill",
                kv_transfer_config=kv_transfer_config(agents[0].endpoint, "prefill"),
                extra_args=no_cache,
            ),
            EngineSpec(
                model,
                free_port(),
                engine_id="decode",
                kv_transfer_config=kv_transfer_config(agents[1].endpoint, "decode"),
                extra_args=no_cache,
            ),
            EngineSpec(model, free_port(), engine_id="reference", extra_args=no_cache),
            EngineSpec(
                model,
                free_port(),
                engine_id="prefill-async",
                kv_transfer_config=kv_transfer_config(
                    agents[0].endpoint, "prefill-async", load_mode="async"
                ),
                extra_args=no_cache,
            ),
        ]
        engines = start_engines(specs)
        yield Rig(agents[0], agents[1], *engines[:3], engines[3], model, str(model), work)
    finally:
        stop_engines(engines)
        for agent in agents:
            agent.stop()


def prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(10, 1000, n)]


def ask(
    engine: EngineProcess,
    tokens: list[int],
    params: DualPathParams | None = None,
    cache_salt: str | None = None,
) -> Completion:
    extra: dict[str, object] = {"kv_transfer_params": params.to_body()} if params else {}
    if cache_salt is not None:
        extra["cache_salt"] = cache_salt
    return greedy_completion(engine.base_url, tokens, TOKENS_OUT, extra_body=extra)


def reads(agent: AgentHandle) -> int:
    with agent.client() as client:
        return client.stat().storage_reads_completed


def engine_counter(engine: EngineProcess, name: str) -> float:
    """The sum of a counter's series on an engine's /metrics (0 when it has none yet:
    vLLM exports a connector's counters once it reported them)."""
    text = httpx.get(f"{engine.base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def stored(agent: AgentHandle, blocks: list[ChainedBlock]) -> int:
    with agent.client() as client:
        return client.lookup(blocks)[0]


def assert_same(got: Completion, want: Completion) -> None:
    diff = compare_runs(got, want)
    assert diff.tokens_equal and diff.logprobs_close, str(diff)


@pytest.mark.parametrize("path", [ReadPathName.PE_READ, ReadPathName.DE_READ, ReadPathName.SPLIT])
def test_each_read_path_gives_the_tokens_of_recompute(rig, path):
    base = prompt(seed=int(path.proto), n=10 * BLOCK)
    # Turn 1 on the decode engine, standalone: it computes and persists 10 full blocks.
    assert_same(ask(rig.decode, base), ask(rig.reference, base))
    assert stored(rig.prefill_agent, rig.chain(base)) == 10
    # Turn 2 on the prefill engine: the 10 blocks come by the chosen path.
    turn2 = base + prompt(seed=100 + int(path.proto), n=75)
    params = DualPathParams(
        request_id=f"path-{path.value}",
        role=Role.PREFILL,
        read_path=path,
        de_read_fraction=0.5 if path is ReadPathName.SPLIT else 0.0,
        decode_agent_endpoint=rig.decode_agent.endpoint,
    )
    pe_before, de_before = reads(rig.prefill_agent), reads(rig.decode_agent)
    got = ask(rig.prefill, turn2, params)
    assert_same(got, ask(rig.reference, turn2))
    pe_reads, de_reads = reads(rig.prefill_agent) - pe_before, reads(rig.decode_agent) - de_before
    # Which node's storage was read is the read path's whole point.
    assert (pe_reads > 0) == (path is not ReadPathName.DE_READ), (pe_reads, de_reads)
    assert (de_reads > 0) == (path is not ReadPathName.PE_READ), (pe_reads, de_reads)


def test_a_prefix_that_ends_inside_a_block_loads_the_full_blocks_and_computes_the_rest(rig):
    base = prompt(seed=21, n=7 * BLOCK + 23)  # 7 full blocks + 23 tokens
    ask(rig.decode, base)
    chain = rig.chain(base)
    assert len(chain) == 7 and stored(rig.prefill_agent, chain) == 7
    turn2 = base + prompt(seed=22, n=40)  # shares 7 blocks and 23 more tokens with turn 1
    before = reads(rig.prefill_agent)
    assert_same(ask(rig.prefill, turn2), ask(rig.reference, turn2))
    assert reads(rig.prefill_agent) > before


def test_a_prefix_longer_than_the_store_holds_loads_what_is_there(rig):
    base = prompt(seed=31, n=12 * BLOCK)
    ask(rig.decode, base)
    chain = rig.chain(base)
    # The store loses block 5 (evicted, say): only blocks 0-4 are a usable prefix.
    victim = (
        rig.workdir / "store" / chain[5].block_hash[:1].hex() / f"{chain[5].block_hash.hex()}.blk"
    )
    victim.unlink()
    # An agent that indexed the block before it vanished drops it at its next store rescan
    # (every 10 s): the shared store's deletions reach every node's index by then.
    wait_for(
        "the prefill agent's index to lose block 5",
        lambda: stored(rig.prefill_agent, chain) == 5,
        15,
        lambda: None,
    )
    turn2 = base + prompt(seed=32, n=30)
    assert_same(ask(rig.prefill, turn2), ask(rig.reference, turn2))


def test_prefill_hands_what_decode_lacks_to_the_decode_agent_and_decode_matches(rig):
    base = prompt(seed=41, n=8 * BLOCK)
    ask(rig.decode, base)  # the shared prefix, as a previous turn left it
    turn2 = base + prompt(seed=42, n=3 * BLOCK + 10)
    chain2 = rig.chain(turn2[:-1])
    assert stored(rig.decode_agent, chain2) == 8
    params = DualPathParams(
        request_id="pd-1",
        role=Role.PREFILL,
        read_path=ReadPathName.DE_READ,
        decode_agent_endpoint=rig.decode_agent.endpoint,
    )
    ask(rig.prefill, turn2, params)  # prefill: loads 8 blocks, computes and hands over 3
    assert stored(rig.decode_agent, chain2) == 11
    de_reads = reads(rig.decode_agent)
    decode_params = DualPathParams(
        request_id="pd-1", role=Role.DECODE, decode_agent_endpoint=rig.decode_agent.endpoint
    )
    got = ask(rig.decode, turn2, decode_params)
    assert_same(got, ask(rig.reference, turn2))
    # The decode side's load was a hand-off, not a storage-NIC read.
    assert reads(rig.decode_agent) == de_reads


def test_a_whole_request_loads_by_de_read_and_stores_what_it_computed(rig):
    """The endpoint picker's destination: the prefill engine prefills and decodes the whole
    request. Its prefix comes over the decode node's path, its tokens are recompute's, and
    what it computed is stored for the next turn."""
    base = prompt(seed=111, n=6 * BLOCK)
    ask(rig.decode, base)  # the shared prefix, as a previous turn left it
    turn2 = base + prompt(seed=112, n=2 * BLOCK + 7)
    params = DualPathParams(
        request_id="whole-1",
        role=Role.WHOLE,
        read_path=ReadPathName.DE_READ,
        decode_agent_endpoint=rig.decode_agent.endpoint,
    )
    pe_before, de_before = reads(rig.prefill_agent), reads(rig.decode_agent)
    got = ask(rig.prefill, turn2, params)
    assert_same(got, ask(rig.reference, turn2))
    assert reads(rig.decode_agent) > de_before  # the decode node's storage NIC served it
    assert reads(rig.prefill_agent) == pe_before
    assert stored(rig.prefill_agent, rig.chain(turn2)) == 8  # 6 loaded + 2 computed, stored


def test_a_wrong_block_is_caught_by_the_equality_check(rig):
    """Negative control: blocks that pass every checksum but hold another prompt's KV must
    change the answer, or the equality checks above prove nothing."""
    base = prompt(seed=51, n=6 * BLOCK)
    other = prompt(seed=52, n=6 * BLOCK)
    ask(rig.decode, other)  # real KV of another prompt
    with AgentClient(rig.decode_agent.endpoint) as client:
        other_chain = rig.chain(other)
        layout = BlockLayout(4, BLOCK, 256)
        images = [client.read_block(b.block_hash, layout=layout) for b in other_chain]
        # Plant it under this prompt's hashes (valid CRCs, wrong contents).
        client.put_blocks(zip(rig.chain(base), images, strict=True), layout)
    turn2 = base + prompt(seed=53, n=20)
    diff = compare_runs(ask(rig.prefill, turn2), ask(rig.reference, turn2))
    assert not (diff.tokens_equal and diff.logprobs_close), "planted KV went unnoticed"


def test_a_decode_agent_killed_mid_load_still_gives_the_right_tokens(rig, tmp_path):
    # A decode agent on a slow storage NIC, so the load is still running when it dies.
    slow = start_agent(
        "de-slow", "decode", rig.workdir / "store", tmp_path, ["--snic-read-gbps", "0.002"]
    )
    try:
        base = prompt(seed=61, n=10 * BLOCK)
        ask(rig.decode, base)
        turn2 = base + prompt(seed=62, n=50)
        params = DualPathParams(
            request_id="killed",
            role=Role.PREFILL,
            read_path=ReadPathName.DE_READ,
            decode_agent_endpoint=slow.endpoint,
        )
        import threading

        killer = threading.Timer(1.0, slow.kill)
        killer.start()
        started = time.monotonic()
        got = ask(rig.prefill, turn2, params)
        killer.join()
        assert not slow.alive()
        assert time.monotonic() - started > 1.0  # it was loading when the agent died
        assert_same(got, ask(rig.reference, turn2))
    finally:
        slow.stop()


@pytest.mark.parametrize("path", [ReadPathName.PE_READ, ReadPathName.DE_READ])
def test_async_load_mode_gives_the_tokens_of_recompute(rig, path):
    base = prompt(seed=80 + int(path.proto), n=9 * BLOCK)
    ask(rig.decode, base)
    turn2 = base + prompt(seed=90 + int(path.proto), n=33)
    params = DualPathParams(
        request_id=f"async-{path.value}",
        role=Role.PREFILL,
        read_path=path,
        decode_agent_endpoint=rig.decode_agent.endpoint,
    )
    reader = rig.decode_agent if path is ReadPathName.DE_READ else rig.prefill_agent
    before = reads(reader)
    assert_same(ask(rig.prefill_async, turn2, params), ask(rig.reference, turn2))
    assert reads(reader) > before


def test_async_load_from_a_dead_decode_agent_is_recomputed(rig):
    base = prompt(seed=95, n=6 * BLOCK)
    ask(rig.decode, base)
    turn2 = base + prompt(seed=96, n=21)
    params = DualPathParams(
        request_id="async-dead",
        role=Role.PREFILL,
        read_path=ReadPathName.DE_READ,
        decode_agent_endpoint="127.0.0.1:1",  # nothing listens there
    )
    before = reads(rig.prefill_agent)
    failures = engine_counter(rig.prefill_async, "vllm:dualpath_load_failures_total")
    assert_same(ask(rig.prefill_async, turn2, params), ask(rig.reference, turn2))
    # vLLM started the request over; the retry read the prefill node's own storage.
    assert reads(rig.prefill_agent) > before
    # Counted where an operator looks: the engine's own /metrics.
    assert engine_counter(rig.prefill_async, "vllm:dualpath_load_failures_total") > failures
    assert engine_counter(rig.prefill_async, "vllm:dualpath_load_retries_total") >= 1


def test_tenants_with_different_cache_salts_share_no_block(rig):
    """vLLM's `cache_salt` roots the request's hash chain: tenant B's identical prompt finds
    none of tenant A's blocks and stores its own; A's next turn hits A's blocks."""
    base = prompt(seed=71, n=6 * BLOCK)
    a_chain, b_chain = rig.chain(base, "tenant-a"), rig.chain(base, "tenant-b")
    assert not {b.block_hash for b in a_chain} & {b.block_hash for b in b_chain}
    # Tenant A's first turn (decode engine, standalone): 6 blocks under A's chain only.
    assert_same(ask(rig.decode, base, cache_salt="tenant-a"), ask(rig.reference, base))
    assert stored(rig.prefill_agent, a_chain) == 6
    assert stored(rig.prefill_agent, rig.chain(base)) == 0
    assert stored(rig.prefill_agent, b_chain) == 0

    # Tenant B, the same prompt and more: its Lookup finds nothing, nothing is read.
    turn2 = base + prompt(seed=72, n=40)
    assert stored(rig.prefill_agent, rig.chain(turn2[:-1], "tenant-b")) == 0
    before = reads(rig.prefill_agent)
    assert_same(ask(rig.prefill, turn2, cache_salt="tenant-b"), ask(rig.reference, turn2))
    assert reads(rig.prefill_agent) == before
    # The store now holds both tenants' blocks, side by side, none shared.
    b_turn2 = rig.chain(turn2, "tenant-b")
    assert len(b_turn2) == 6 and stored(rig.prefill_agent, b_turn2) == 6
    assert stored(rig.prefill_agent, a_chain) == 6
    assert not {b.block_hash for b in a_chain} & {b.block_hash for b in b_turn2}

    # Tenant A's second turn hits A's 6 blocks (loaded, then the same tokens as recompute).
    assert stored(rig.prefill_agent, rig.chain(turn2[:-1], "tenant-a")) == 6
    loaded = engine_counter(rig.prefill, "vllm:dualpath_blocks_loaded_total")
    before = reads(rig.prefill_agent)
    assert_same(ask(rig.prefill, turn2, cache_salt="tenant-a"), ask(rig.reference, turn2))
    assert reads(rig.prefill_agent) > before
    wait_for(
        "blocks_loaded counted",
        lambda: engine_counter(rig.prefill, "vllm:dualpath_blocks_loaded_total") >= loaded + 6,
        10,
        lambda: None,
    )
