"""Three real agent processes on loopback (one prefill node, two decode nodes) sharing one
store directory (standing for the distributed store), moving KV through NIXL on every
read path; every byte is checked against the blocks' deterministic contents."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from dualpath_agent import kvgen
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient, ReadPath, expected_region
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout

LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)  # 256 KiB blocks


@dataclass
class Cluster:
    prefill: AgentHandle
    decode: list[AgentHandle]
    pe: AgentClient
    de: list[AgentClient]


def chain_for(seed: int, blocks: int, extra_tokens: int = 0) -> list[ChainedBlock]:
    tokens = np.random.default_rng(seed).integers(0, 100_000, blocks * 64 + extra_tokens)
    return block_chain(tokens, 64, parent=root_hash("tiny-test"), include_partial=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("agents")
    store = work / "store"
    agents: list[AgentHandle] = []
    try:
        # de-node-b streams in groups of 1 MiB (several per load: read one while the
        # previous one is written); de-node-a reads everything first (one group).
        for node, role, extra in (
            ("pe-node", "prefill", []),
            ("de-node-a", "decode", ["--stream-group-bytes", "0"]),
            ("de-node-b", "decode", ["--stream-group-bytes", "1MiB"]),
        ):
            agents.append(start_agent(node, role, store, work, extra, buffer_bytes="96MiB"))
        yield Cluster(agents[0], agents[1:], agents[0].client(), [a.client() for a in agents[1:]])
    finally:
        for a in agents:
            a.stop()


def test_agents_run_nixl_for_peers_and_storage(cluster):
    for client in [cluster.pe, *cluster.de]:
        stat = client.stat()
        assert stat.peer_transport == "nixl-ucx"
        assert stat.storage_transport == "nixl-posix"
        assert stat.fallback_reason == ""
        assert stat.direct_io
        assert stat.device_tier == "DRAM"  # no GPU on this machine: same code path, host memory
    assert cluster.pe.stat().role == "prefill" and cluster.de[0].stat().role == "decode"


@pytest.mark.parametrize(
    ("path", "decode_index"),
    [(ReadPath.PE_READ, None), (ReadPath.DE_READ, 0), (ReadPath.DE_READ, 1), (ReadPath.SPLIT, 1)],
)
def test_each_read_path_delivers_verified_bytes_layer_by_layer(cluster, path, decode_index):
    chain = chain_for(seed=10 + (decode_index or 0), blocks=24, extra_tokens=17)  # tail block
    cluster.de[0].seed_synthetic(chain, LAYOUT)
    endpoint = cluster.decode[decode_index].endpoint if decode_index is not None else ""
    request_id = f"paths-{path.name}-{decode_index}"
    seen: list[int] = []
    result = cluster.pe.load(
        request_id,
        chain,
        LAYOUT,
        path,
        decode_endpoint=endpoint,
        de_read_fraction=0.5,
        release_after_load=False,
        on_layer=lambda p: seen.append(p.layer),
    )
    try:
        total = sum(b.tokens for b in chain) * LAYOUT.layers * LAYOUT.bytes_per_token_layer
        assert seen == list(range(LAYOUT.layers)) == result.layers_seen
        assert result.bytes_total == total and result.blocks_verified == len(chain)
        expected_peer = {ReadPath.PE_READ: 0, ReadPath.DE_READ: total, ReadPath.SPLIT: None}[path]
        if expected_peer is not None:
            assert result.bytes_from_peer == expected_peer
            assert result.bytes_from_local_storage == total - expected_peer
        else:
            assert (result.blocks_remote, result.blocks_local) == (12, 13)  # round(12.5) = 12
            assert 0 < result.bytes_from_peer < total
        # Every byte, read back from the prefill agent's device tier, layer by layer.
        for layer in range(LAYOUT.layers):
            got = cluster.pe.read_region(request_id, layer=layer)
            assert got == expected_region(chain, LAYOUT, layer), f"layer {layer} differs"
    finally:
        released = cluster.pe.release(request_id)
    assert released.released == ["load"]


def test_concurrent_loads_over_all_paths_and_both_decode_nodes(cluster):
    chains = [chain_for(seed=100 + i, blocks=16) for i in range(8)]
    for c in chains:
        cluster.de[1].seed_synthetic(c, LAYOUT)
    plans = [
        (ReadPath.PE_READ, ""),
        (ReadPath.DE_READ, cluster.decode[0].endpoint),
        (ReadPath.DE_READ, cluster.decode[1].endpoint),
        (ReadPath.SPLIT, cluster.decode[0].endpoint),
        (ReadPath.SPLIT, cluster.decode[1].endpoint),
        (ReadPath.DE_READ, cluster.decode[0].endpoint),
        (ReadPath.PE_READ, ""),
        (ReadPath.DE_READ, cluster.decode[1].endpoint),
    ]

    def run(i: int) -> bytes:
        path, endpoint = plans[i]
        rid = f"conc-{i}"
        cluster.pe.load(
            rid, chains[i], LAYOUT, path, decode_endpoint=endpoint, release_after_load=False
        )
        try:
            return cluster.pe.read_region(rid)
        finally:
            cluster.pe.release(rid)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for i, data in enumerate(results):
        assert data == expected_region(chains[i], LAYOUT), f"load {i} ({plans[i][0].name}) differs"
    # Nothing leaked: every buffer is whole again on every agent.
    for client in [cluster.pe, *cluster.de]:
        stat = client.stat()
        assert stat.buffer_bytes_free == stat.buffer_bytes_total
        assert stat.device_bytes_free == stat.device_bytes_total
        assert stat.active_transfers == 0 and stat.read_queue_length == 0


@pytest.mark.parametrize("path", [ReadPath.DE_READ, ReadPath.PE_READ, ReadPath.SPLIT])
def test_commit_merges_missed_tokens_on_the_decode_side_and_persists_full_blocks(cluster, path):
    # 20 cached blocks; this turn appends 3 full blocks + 10 tokens that prefill computes.
    chain = chain_for(seed=200 + int(path), blocks=23, extra_tokens=10)
    prefix, new_full, tail = chain[:20], chain[20:23], chain[23]
    cluster.de[0].seed_synthetic(prefix, LAYOUT)
    missed = 3 * 64 + tail.tokens
    # SPLIT goes through the decode node that streams in groups (its staged prefix is held
    # as several groups until the merge).
    index = 1 if path == ReadPath.SPLIT else 0
    decode, de_client = cluster.decode[index], cluster.de[index]
    rid = f"commit-{path.name}"
    cluster.pe.load(
        rid,
        prefix,
        LAYOUT,
        path,
        decode_endpoint=decode.endpoint,
        missed_tokens=missed,
        release_after_load=False,
        keep_for_merge=True,
    )
    reply = cluster.pe.commit(rid, missed, new_full)
    bpt, layers = LAYOUT.bytes_per_token_layer, LAYOUT.layers
    missed_bytes = layers * missed * bpt
    prefix_bytes = layers * 20 * 64 * bpt
    if path == ReadPath.DE_READ:
        # DualPath's point: the decode side kept the prefix; only missed tokens travel back.
        assert reply.bytes_sent_to_decode == missed_bytes
    elif path == ReadPath.PE_READ:
        assert reply.bytes_sent_to_decode == missed_bytes + prefix_bytes
    else:
        assert missed_bytes < reply.bytes_sent_to_decode < missed_bytes + prefix_bytes
    assert reply.blocks_persisted == 3 and reply.persist_error == ""
    # The decode agent holds the merged KV: prefix + new blocks + tail, layer-major.
    merged = de_client.read_region(rid, "merged")
    expected = b"".join(
        b"".join(kvgen.layer_bytes(b.block_hash, layer, b.tokens, bpt) for b in prefix + new_full)
        + kvgen.tail_layer_bytes(rid.encode(), layer, tail.tokens, bpt)
        for layer in range(layers)
    )
    assert merged == expected
    # The new full blocks are in the (shared) store, intact, readable from another node.
    assert cluster.de[1].lookup(new_full) == (3, [True, True, True])
    for b in new_full:
        assert cluster.pe.read_block(b.block_hash) == kvgen.block_bytes(b.block_hash, LAYOUT, 64)
    assert cluster.pe.stat().device_bytes_free == cluster.pe.stat().device_bytes_total
    assert de_client.release(rid).released == ["merged"]


@pytest.mark.parametrize("path", [ReadPath.DE_READ, ReadPath.PE_READ])
def test_a_prompt_with_nothing_cached_loads_no_blocks_and_commits(cluster, path):
    # A cold prompt: no cached prefix; prefill computes 2 full blocks + 5 tokens.
    chain = chain_for(seed=250 + int(path), blocks=2, extra_tokens=5)
    new_full, tail = chain[:2], chain[2]
    missed = 2 * 64 + tail.tokens
    decode, de_client = cluster.decode[0], cluster.de[0]
    rid = f"cold-{path.name}"
    result = cluster.pe.load(
        rid,
        [],
        LAYOUT,
        path,
        decode_endpoint=decode.endpoint,
        missed_tokens=missed,
        release_after_load=False,
        keep_for_merge=path == ReadPath.DE_READ,
    )
    assert result.bytes_total == 0 and result.blocks_verified == 0
    assert result.layers_seen == list(range(LAYOUT.layers))
    reply = cluster.pe.commit(rid, missed, new_full)
    bpt, layers = LAYOUT.bytes_per_token_layer, LAYOUT.layers
    assert reply.bytes_sent_to_decode == layers * missed * bpt
    assert reply.blocks_persisted == 2 and reply.persist_error == ""
    merged = de_client.read_region(rid, "merged")
    expected = b"".join(
        b"".join(kvgen.layer_bytes(b.block_hash, layer, b.tokens, bpt) for b in new_full)
        + kvgen.tail_layer_bytes(rid.encode(), layer, tail.tokens, bpt)
        for layer in range(layers)
    )
    assert merged == expected
    assert cluster.de[1].lookup(new_full) == (2, [True, True])
    assert de_client.release(rid).released == ["merged"]
    assert cluster.pe.stat().device_bytes_free == cluster.pe.stat().device_bytes_total


def test_a_load_with_no_blocks_and_no_missed_tokens_is_refused(cluster):
    with pytest.raises(grpc.RpcError) as err:
        cluster.pe.load("empty", [], LAYOUT, ReadPath.PE_READ)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "blocks is empty and missed_tokens is 0" in (err.value.details() or "")


def test_layer_block_read_and_prefix_lookup(cluster):
    chain = chain_for(seed=300, blocks=6)
    cluster.de[1].seed_synthetic(chain[:4], LAYOUT)
    assert cluster.pe.lookup(chain) == (4, [True, True, True, True, False, False])
    b = chain[2]
    layer = cluster.de[0].read_block(b.block_hash, layer=3, layout=LAYOUT)
    assert layer == kvgen.layer_bytes(b.block_hash, 3, 64, LAYOUT.bytes_per_token_layer)


def test_metrics_health_and_progress_counters(cluster):
    base = f"http://{cluster.prefill.metrics_address}"
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    assert 'dualpath_agent_bytes_total{direction="in",path="pe_read",tier="storage"}' in text
    assert "dualpath_agent_transport_info{" in text and 'peer="nixl-ucx"' in text
    assert "dualpath_agent_load_seconds_bucket" in text
    assert "dualpath_agent_read_queue_length 0.0" in text
    de_text = (
        urllib.request.urlopen(f"http://{cluster.decode[0].metrics_address}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'dualpath_agent_bytes_total{direction="out",path="de_read",tier="peer"}' in de_text
    assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
    assert cluster.pe.health().serving


def test_duplicate_request_id_is_refused_while_held(cluster):
    chain = chain_for(seed=400, blocks=2)
    cluster.de[0].seed_synthetic(chain, LAYOUT)
    cluster.pe.load("dup", chain, LAYOUT, ReadPath.PE_READ, release_after_load=False)
    try:
        with pytest.raises(grpc.RpcError) as err:
            cluster.pe.load("dup", chain, LAYOUT, ReadPath.PE_READ)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        cluster.pe.release("dup")


def test_client_can_cancel_a_load_and_nothing_leaks(cluster):
    chain = chain_for(seed=500, blocks=32)
    cluster.de[0].seed_synthetic(chain, LAYOUT)
    stream = cluster.pe.load_stream("cancel-me", chain, LAYOUT, ReadPath.PE_READ)
    first = next(iter(stream))
    assert first.layer == 0
    stream.cancel()
    done = threading.Event()

    def settled() -> bool:
        stat = cluster.pe.stat()
        return stat.active_transfers == 0 and stat.device_bytes_free == stat.device_bytes_total

    for _ in range(100):
        if settled():
            done.set()
            break
        threading.Event().wait(0.05)
    assert done.is_set()
