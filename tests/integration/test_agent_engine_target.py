"""Loads straight into an engine's paged KV cache (LoadRequest.engine_target).

This test process plays the engine's transfer layer exactly as the vLLM connector does
(dualpath_vllm.kv_cache.EngineKvCache: its own NIXL agent, KV-cache buffers laid out like
vLLM's, per-layer notifications counted), with real agent processes writing into it on
every read path; every landed byte is compared with the blocks' deterministic contents,
at the engine block ids the load asked for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from dualpath.v1 import agent_pb2
from dualpath_agent import kvgen
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient, ReadPath, block_ref, layout_msg
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_vllm.kv_cache import EngineKvCache, LoadFailed, describe_layer

NUM_BLOCKS, BLOCK_TOKENS, LAYERS = 48, 64, 4
# vLLM's CPU layout: (num_blocks, 2, block_size, kv_heads * head_dim) bf16 per layer.
HEAD_BYTES = 2 * 32 * 2


@dataclass
class Rig:
    prefill: AgentHandle
    decode: AgentHandle
    pe: AgentClient
    de: AgentClient
    cache: EngineKvCache
    tensors: list[np.ndarray]


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("engine-target")
    store = work / "store"
    tensors = [
        np.zeros((NUM_BLOCKS, 2, BLOCK_TOKENS, HEAD_BYTES // 2), dtype=np.uint16)
        for _ in range(LAYERS)
    ]
    layers = [
        describe_layer(
            t.shape,
            [s // t.itemsize for s in t.strides],
            t.itemsize,
            t.ctypes.data,
            NUM_BLOCKS,
        )
        for t in tensors
    ]
    cache = EngineKvCache("test-engine", layers, BLOCK_TOKENS)
    agents: list[AgentHandle] = []
    try:
        agents.append(start_agent("pe-node", "prefill", store, work, buffer_bytes="32MiB"))
        agents.append(
            start_agent(
                "de-node",
                "decode",
                store,
                work,
                ["--stream-group-bytes", "256KiB"],
                buffer_bytes="32MiB",
            )
        )
        yield Rig(agents[0], agents[1], agents[0].client(), agents[1].client(), cache, tensors)
    finally:
        for a in agents:
            a.stop()
        cache.close()


def chain_for(seed: int, blocks: int) -> list[ChainedBlock]:
    tokens = np.random.default_rng(seed).integers(0, 1000, blocks * BLOCK_TOKENS)
    return block_chain(tokens, BLOCK_TOKENS, parent=root_hash("engine-target-test"))


def load(
    rig: Rig,
    chain: list[ChainedBlock],
    block_ids: list[int],
    path: ReadPath,
    fraction: float = 0.0,
    handoff: bool = False,
) -> agent_pb2.LoadProgress:
    target = rig.cache.target(block_ids)
    n_remote = {ReadPath.PE_READ: 0, ReadPath.DE_READ: len(chain)}.get(
        path, round(fraction * len(chain))
    )
    rig.cache.expect(target, len(chain) - n_remote, n_remote)
    request = agent_pb2.LoadRequest(
        request_id=f"engine-{target.transfer_id[:8]}",
        blocks=[block_ref(b) for b in chain],
        layout=layout_msg(rig.cache.layout),
        read_path=int(path),
        de_read_fraction=fraction,
        decode_agent_endpoint=rig.decode.endpoint if n_remote else "",
        engine_target=target.to_proto(),
        handoff=handoff,
    )
    final = None
    for msg in rig.pe.stub.Load(request, timeout=60):
        final = msg
    assert final is not None and final.done
    for layer in range(LAYERS):
        rig.cache.wait_layer(target.transfer_id, layer, 10.0, lambda: None)
    rig.cache.forget(target.transfer_id)
    return final


def engine_block(rig: Rig, layer: int, block_id: int) -> bytes:
    return rig.tensors[layer][block_id].tobytes()


def assert_landed(rig: Rig, chain: list[ChainedBlock], block_ids: list[int]) -> None:
    bpt = rig.cache.layout.bytes_per_token_layer
    for b, block_id in zip(chain, block_ids, strict=True):
        for layer in range(LAYERS):
            expected = kvgen.layer_bytes(b.block_hash, layer, b.tokens, bpt)
            assert engine_block(rig, layer, block_id) == expected, (b.block_hash.hex(), layer)


@pytest.mark.parametrize(
    ("path", "fraction"),
    [(ReadPath.PE_READ, 0.0), (ReadPath.DE_READ, 0.0), (ReadPath.SPLIT, 0.5)],
)
def test_each_path_writes_verified_blocks_into_the_engine_blocks_asked_for(rig, path, fraction):
    chain = chain_for(seed=int(path) * 7, blocks=12)
    rig.de.seed_synthetic(chain, rig.cache.layout)
    # Scattered, out-of-order engine blocks, as vLLM's block pool hands them out.
    block_ids = list(np.random.default_rng(int(path)).permutation(NUM_BLOCKS)[: len(chain)])
    before = {i: engine_block(rig, 0, i) for i in range(NUM_BLOCKS) if i not in block_ids}
    final = load(rig, chain, [int(i) for i in block_ids], path, fraction)
    assert_landed(rig, chain, [int(i) for i in block_ids])
    # Nothing outside the asked-for blocks was touched.
    assert all(engine_block(rig, 0, i) == data for i, data in before.items())
    layer_bytes = BLOCK_TOKENS * rig.cache.layout.bytes_per_token_layer
    assert final.bytes_from_peer == final.blocks_remote * LAYERS * layer_bytes
    assert final.blocks_local + final.blocks_remote == len(chain)
    if path is ReadPath.DE_READ:
        assert final.blocks_local == 0 and final.bytes_from_local_storage == 0
    if path is ReadPath.PE_READ:
        assert final.blocks_remote == 0


def test_handoff_load_is_not_a_storage_nic_read(rig):
    chain = chain_for(seed=99, blocks=6)
    rig.de.seed_synthetic(chain, rig.cache.layout)
    before = rig.de.stat().storage_reads_completed
    load(rig, chain, list(range(6)), ReadPath.PE_READ, handoff=False)
    # The prefill agent's ordinary read counts; a hand-off on the decode agent does not.
    target = rig.cache.target(list(range(10, 16)))
    rig.cache.expect(target, 6, 0)
    request = agent_pb2.LoadRequest(
        request_id="handoff-1",
        blocks=[block_ref(b) for b in chain],
        layout=layout_msg(rig.cache.layout),
        read_path=int(ReadPath.PE_READ),
        engine_target=target.to_proto(),
        handoff=True,
    )
    assert list(rig.de.stub.Load(request, timeout=60))[-1].done
    for layer in range(LAYERS):
        rig.cache.wait_layer(target.transfer_id, layer, 10.0, lambda: None)
    assert_landed(rig, chain, list(range(10, 16)))
    assert rig.de.stat().storage_reads_completed == before


def test_bad_engine_targets_are_rejected_naming_the_field(rig):
    chain = chain_for(seed=5, blocks=2)
    rig.de.seed_synthetic(chain, rig.cache.layout)
    good = rig.cache.target([0, 1]).to_proto()
    cases = {
        "engine_target.block_ids": dict(block_ids=[0]),
        "engine_target.plane_block_bytes": dict(plane_block_bytes=good.plane_block_bytes // 2),
        "engine_target.mem_type": dict(mem_type="HBM"),
        "engine_target.plane_addresses": dict(plane_addresses=good.plane_addresses[:1]),
    }
    for field, change in cases.items():
        bad = agent_pb2.EngineKvTarget()
        bad.CopyFrom(good)
        for key, value in change.items():
            if isinstance(value, list) or (
                hasattr(value, "__len__") and not isinstance(value, str)
            ):
                bad.ClearField(key)  # type: ignore[arg-type]
                getattr(bad, key).extend(value)
            else:
                setattr(bad, key, value)
        request = agent_pb2.LoadRequest(
            request_id="bad",
            blocks=[block_ref(b) for b in chain],
            layout=layout_msg(rig.cache.layout),
            read_path=int(ReadPath.PE_READ),
            engine_target=bad,
        )
        with pytest.raises(grpc.RpcError) as err:
            list(rig.pe.stub.Load(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in err.value.details()


def test_a_dead_decode_agent_fails_the_load_and_the_engine_stops_waiting(tmp_path, rig):
    chain = chain_for(seed=17, blocks=4)
    rig.de.seed_synthetic(chain, rig.cache.layout)
    target = rig.cache.target([20, 21, 22, 23])
    rig.cache.expect(target, 0, 4)
    request = agent_pb2.LoadRequest(
        request_id="dead-peer",
        blocks=[block_ref(b) for b in chain],
        layout=layout_msg(rig.cache.layout),
        read_path=int(ReadPath.DE_READ),
        decode_agent_endpoint="127.0.0.1:1",  # nothing listens there
        engine_target=target.to_proto(),
    )
    with pytest.raises(grpc.RpcError) as err:
        list(rig.pe.stub.Load(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    error = RuntimeError(err.value.details())
    with pytest.raises(LoadFailed):
        rig.cache.wait_layer(target.transfer_id, 0, 10.0, lambda: error)
