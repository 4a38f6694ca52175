"""Fuzzing real agent processes (a prefill and a decode agent on one store) with bad input,
over every RPC of the Agent service.

For each method: messages of its input type with hostile field values, valid requests
(seeded blocks, real regions, the agents' own transport metadata) with one or two fields
made hostile, raw wire bytes and messages of other types; PutBlocks gets streams of such
chunks. Fields the agent connects to (endpoints) only ever name loopback ports. Property:
every call ends within its deadline with OK or a clean status (tests/support/fuzz.py;
UNAVAILABLE too where a peer agent is involved), every reply parses, both processes stay
up, answer Health, log no unhandled exception and get all their buffer space back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from dualpath.v1 import agent_pb2
from dualpath.v1 import traffic_controller_pb2 as tc_pb2
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient, ReadPath, block_ref, layout_msg
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests.support import fuzz

pytestmark = pytest.mark.timeout(180)

TARGET = "agent"
SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
METHODS = {m.name: m for m in SERVICE.methods}
TYPES = fuzz.all_message_types(agent_pb2, tc_pb2)
LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=256)
TIMEOUT_S = 15.0
HELD = "fuzz-held"  # a load the prefill agent holds for ReadRegion and Merge
ENGINE = "fuzz-engine"  # a load the decode agent holds: the "engine KV cache" of Loads
# Methods that reach the other agent (DE_READ / SPLIT, Commit -> Merge, ServeLayers and
# Merge -> NIXL transfers): a peer that is not there is UNAVAILABLE.
PEER_METHODS = {"Load", "Commit", "ServeLayers", "Merge"}
DECODE_SIDE = {"ServeLayers", "Merge"}


@dataclass
class Pair:
    pe: AgentHandle
    de: AgentHandle
    pe_client: AgentClient
    de_client: AgentClient
    pe_channel: grpc.Channel
    de_channel: grpc.Channel
    chain: list[ChainedBlock]
    pe_metadata: bytes
    de_metadata: bytes

    def alive(self) -> None:
        for agent in (self.pe, self.de):
            assert agent.alive(), f"agent {agent.node} exited:\n{agent.log_tail(60)}"

    def hold(self) -> agent_pb2.LoadProgress:
        """(Re)load HELD on the prefill agent, with room for 64 missed tokens."""
        self.pe_client.release(HELD)
        stream = self.pe_client.load_stream(
            HELD, self.chain, LAYOUT, ReadPath.PE_READ, missed_tokens=64, release_after_load=False
        )
        return next(p for p in stream if p.done)

    def engine_load(self) -> agent_pb2.LoadRequest:
        """A valid Load into an "engine's KV cache": a region the decode agent holds
        (ENGINE), registered with its NIXL agent as an engine's would be."""
        self.de_client.release(ENGINE)
        stream = self.de_client.load_stream(
            ENGINE, self.chain, LAYOUT, ReadPath.PE_READ, release_after_load=False
        )
        region = next(p for p in stream if p.done)
        layer_block = LAYOUT.block_tokens * LAYOUT.bytes_per_token_layer
        return agent_pb2.LoadRequest(
            request_id="fuzz-engine-load",
            blocks=[block_ref(b) for b in self.chain],
            layout=layout_msg(LAYOUT),
            read_path=tc_pb2.READ_PATH_PE_READ,
            engine_target=agent_pb2.EngineKvTarget(
                agent_name="de",
                agent_metadata=self.de_metadata,
                mem_type="DRAM",
                plane_addresses=[
                    region.region_address + i * region.region_layer_stride
                    for i in range(LAYOUT.layers)
                ],
                planes=1,
                plane_block_bytes=layer_block,
                block_stride=layer_block,
                block_ids=list(range(len(self.chain))),
                transfer_id="fuzz-engine",
            ),
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    work: Path = tmp_path_factory.mktemp("fuzz-agent")
    agents: list[AgentHandle] = []
    try:
        # A short region quarantine: a failed DE_READ does not keep device space for long.
        quick = ["--region-quarantine-seconds", "1", "--transfer-timeout", "5"]
        agents.append(start_agent("pe", "prefill", work / "store", work, quick))
        agents.append(start_agent("de", "decode", work / "store", work, quick))
        pe, de = agents
        pe_client, de_client = pe.client(TIMEOUT_S), de.client(TIMEOUT_S)
        pe_client.wait_ready()
        de_client.wait_ready()
        tokens = np.random.default_rng(7).integers(0, 50_000, 3 * 64)
        chain = block_chain(tokens, 64, parent=root_hash("fuzz"))
        de_client.seed_synthetic(chain, LAYOUT)
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with (
            grpc.insecure_channel(pe.endpoint, options=options) as pe_channel,
            grpc.insecure_channel(de.endpoint, options=options) as de_channel,
        ):
            yield Pair(
                pe,
                de,
                pe_client,
                de_client,
                pe_channel,
                de_channel,
                chain,
                pe_client.peer_info().metadata,
                de_client.peer_info().metadata,
            )
    finally:
        for agent in agents:
            agent.stop()


def overrides(p: Pair) -> fuzz.Overrides:
    """Endpoints only on loopback (a real agent among them); transport metadata that is
    real, empty or garbage."""
    endpoints = fuzz.CLOSED_PORT_ENDPOINTS + fuzz.BAD_ENDPOINTS + (p.de.endpoint, p.pe.endpoint)
    metadata = st.one_of(st.sampled_from((p.pe_metadata, p.de_metadata)), fuzz.nasty_bytes())
    return {
        "decode_agent_endpoint": st.sampled_from(endpoints),
        "caller_metadata": metadata,
        "target_metadata": metadata,
        "source_metadata": metadata,
        "agent_metadata": metadata,
        "target_mem_type": st.sampled_from(("DRAM", "VRAM", "", "HBM")),
        "source_mem_type": st.sampled_from(("DRAM", "VRAM", "", "HBM")),
        "mem_type": st.sampled_from(("DRAM", "VRAM", "", "HBM")),
    }


def bases(p: Pair) -> dict[str, Message]:
    """One valid request per method that has fields (mutations start from these)."""
    refs = [block_ref(b) for b in p.chain]
    held = p.hold()
    crcs = [
        agent_pb2.BlockChecksums(
            block_hash=b.block_hash,
            layer_crc32c=[
                c
                for chunk in p.de_client.stub.ReadBlock(
                    agent_pb2.ReadBlockRequest(block_hash=b.block_hash)
                )
                for c in chunk.layer_crc32c
            ],
        )
        for b in p.chain
    ]
    return {
        "PeerInfo": agent_pb2.PeerInfoRequest(caller_metadata=p.de_metadata, caller_name="de"),
        "Lookup": agent_pb2.LookupRequest(block_hashes=[r.block_hash for r in refs]),
        "Load": agent_pb2.LoadRequest(
            request_id="fuzz-load",
            blocks=refs,
            layout=layout_msg(LAYOUT),
            read_path=tc_pb2.READ_PATH_SPLIT,
            de_read_fraction=0.5,
            decode_agent_endpoint=p.de.endpoint,
            release_after_load=True,
        ),
        "ServeLayers": agent_pb2.ServeLayersRequest(
            request_id="fuzz-serve",
            blocks=refs,
            layout=layout_msg(LAYOUT),
            target_agent="pe",
            target_metadata=p.pe_metadata,
            target_mem_type="DRAM",
            target_address=held.region_address,
            target_layer_stride=held.region_layer_stride,
            transfer_id="fuzz",
        ),
        "Commit": agent_pb2.CommitRequest(
            request_id=HELD, missed_tokens=64, decode_agent_endpoint=p.de.endpoint, persist=False
        ),
        "Merge": agent_pb2.MergeRequest(
            request_id="fuzz-merge",
            layout=layout_msg(LAYOUT),
            prefix_blocks=refs,
            prefix_checksums=crcs,
            source_agent="pe",
            source_metadata=p.pe_metadata,
            source_mem_type="DRAM",
            source_address=held.region_address,
            source_layer_stride=held.region_layer_stride,
        ),
        "Release": agent_pb2.ReleaseRequest(request_id="fuzz-release"),
        "PutBlocks": agent_pb2.BlockChunk(
            ref=refs[0],
            layout=layout_msg(LAYOUT),
            total_bytes=LAYOUT.block_bytes(64),
            synthetic=True,
        ),
        "ReadBlock": agent_pb2.ReadBlockRequest(
            block_hash=refs[0].block_hash, layer=1, layout=layout_msg(LAYOUT)
        ),
        "ReadRegion": agent_pb2.ReadRegionRequest(
            request_id=HELD, kind=agent_pb2.REGION_KIND_LOAD, layer=0
        ),
    }


def request_ids(payloads: list[bytes], method: MethodDescriptor) -> set[str]:
    cls = fuzz.message_class(method.input_type)
    ids = set()
    for payload in payloads:
        if fuzz.parses_as(cls, payload) and "request_id" in cls.DESCRIPTOR.fields_by_name:
            rid = cls.FromString(payload).request_id  # type: ignore[attr-defined]
            if rid and len(rid) < 4096:
                ids.add(rid)
    return ids


def run_case(p: Pair, method: MethodDescriptor, payloads: list[bytes], kind: str) -> fuzz.Outcome:
    if method.name in ("Commit", "ReadRegion", "Merge", "ServeLayers"):
        p.hold()  # Commit consumes it; its region is the target of ServeLayers and Merge
    # The decode side's calls go to the decode agent (they write into or read from the
    # prefill agent's held region); every other to the prefill agent.
    channel = p.de_channel if method.name in DECODE_SIDE else p.pe_channel
    outcome = fuzz.call_raw(channel, method, payloads, TIMEOUT_S)
    p.alive()
    allowed = fuzz.PEER_CODES if method.name in PEER_METHODS else fuzz.CLEAN_CODES
    fuzz.check_outcome(TARGET, method, outcome, allowed, kind)
    for rid in request_ids(payloads, method):  # what a client would release
        for client in (p.pe_client, p.de_client):
            client.release(rid)
    return outcome


def run_property(
    examples: int, strategy: st.SearchStrategy[list[bytes]], case: Callable[[list[bytes]], object]
) -> None:
    @fuzz.fuzz_settings(examples)
    @given(strategy)
    def run(payloads: list[bytes]) -> None:
        case(payloads)

    run()


def test_the_valid_requests_are_valid(pair):
    """The mutations start from requests that succeed (else they test little)."""
    for name, base in bases(pair).items():
        method = METHODS[name]
        if name in ("Commit", "ReadRegion", "Merge", "ServeLayers"):
            pair.hold()
        channel = pair.de_channel if name in DECODE_SIDE else pair.pe_channel
        outcome = fuzz.call_raw(channel, method, [base.SerializeToString()], TIMEOUT_S)
        assert outcome.code == grpc.StatusCode.OK, (name, outcome)
        for client in (pair.pe_client, pair.de_client):
            client.release(getattr(base, "request_id", "") or "unused")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hostile_field_values(pair, name):
    method = METHODS[name]
    one = fuzz.serialized(fuzz.messages(method.input_type, overrides(pair)))
    run_property(
        25, fuzz.payloads_for(method, one), lambda ps: run_case(pair, method, ps, "hostile fields")
    )


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"Health", "Stat"}))
def test_valid_requests_with_hostile_fields(pair, name):
    method = METHODS[name]
    base = bases(pair)[name]
    one = fuzz.serialized(fuzz.mutations(base, overrides(pair)))
    if method.client_streaming:  # a valid first chunk, then hostile ones
        strategy = st.lists(one, min_size=0, max_size=3).map(
            lambda rest: [base.SerializeToString(), *rest]
        )
        strategy = st.one_of(strategy, fuzz.payloads_for(method, one))
    else:
        strategy = fuzz.payloads_for(method, one)
    run_property(25, strategy, lambda ps: run_case(pair, method, ps, "mutated valid request"))


def test_engine_target_with_hostile_fields(pair):
    """Loads into an engine's KV cache (the connector's path) with hostile target fields."""
    method = METHODS["Load"]
    base = pair.engine_load()
    outcome = fuzz.call_raw(pair.pe_channel, method, [base.SerializeToString()], TIMEOUT_S)
    assert outcome.code == grpc.StatusCode.OK, outcome  # the base is valid

    def with_target(target: Message) -> bytes:
        request = agent_pb2.LoadRequest()
        request.CopyFrom(base)
        request.engine_target.CopyFrom(target)
        return request.SerializeToString()

    one = fuzz.mutations(base.engine_target, overrides(pair)).map(with_target)
    run_property(
        40, fuzz.payloads_for(method, one), lambda ps: run_case(pair, method, ps, "engine target")
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_raw_bytes(pair, name):
    method = METHODS[name]
    cls = fuzz.message_class(method.input_type)

    def case(payloads: list[bytes]) -> None:
        outcome = run_case(pair, method, payloads, "raw bytes")
        if not method.client_streaming and not fuzz.parses_as(cls, payloads[0]):
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome

    run_property(15, fuzz.payloads_for(method, fuzz.raw_payloads()), case)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_messages_of_the_wrong_type(pair, name):
    method = METHODS[name]
    strategy = fuzz.payloads_for(method, fuzz.wrong_type_payloads(method, TYPES))
    run_property(10, strategy, lambda ps: run_case(pair, method, ps, "wrong message type"))


def test_still_serving_after_the_fuzzing(pair):
    """Run last (file order): both agents are up and healthy, logged no unhandled
    exception, and have all their buffer space back once nothing is held."""
    for client in (pair.pe_client, pair.de_client):
        client.release(HELD)
        client.release(ENGINE)
    for agent, client in ((pair.pe, pair.pe_client), (pair.de, pair.de_client)):
        assert agent.alive()
        assert client.health().serving
        deadline = time.monotonic() + 10
        while True:
            s = client.stat()
            whole = (
                s.buffer_bytes_free == s.buffer_bytes_total
                and s.device_bytes_free == s.device_bytes_total
                and s.held_requests == 0
            )
            if whole or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert whole, s
        errors = [
            line
            for line in agent.log_path.read_text(errors="replace").splitlines()
            if '"level": "error"' in line or "Traceback" in line
        ]
        assert not errors, errors[:3]
    print("\n" + "\n".join(fuzz.TALLY.lines()))
