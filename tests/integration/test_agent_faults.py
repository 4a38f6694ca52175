"""Bad input and faults against real agent processes: each ends in a clear gRPC error,
nothing corrupt is ever served, and the agent keeps serving other requests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from dualpath.v1 import agent_pb2
from dualpath_agent import kvgen
from dualpath_agent.blockhash import ChainedBlock, block_chain, root_hash
from dualpath_agent.client import AgentClient, ReadPath, expected_region, layout_msg
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.layout import BlockLayout

from tests.support.background_load import BackgroundDeRead
from tests.support.metrics import sample_value
from tests.support.wait import wait_for

LAYOUT = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)
BLOCK_FILE = LAYOUT.file_bytes(64)


def chain_for(seed: int, blocks: int) -> list[ChainedBlock]:
    tokens = np.random.default_rng(seed).integers(0, 100_000, blocks * 64)
    return block_chain(tokens, 64, parent=root_hash("faults"))


def code_of(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def buffers_whole(client: AgentClient) -> bool:
    s = client.stat()
    return (
        s.buffer_bytes_free == s.buffer_bytes_total
        and s.device_bytes_free == s.device_bytes_total
        and s.active_transfers == 0
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("agent-faults")


@pytest.fixture(scope="module")
def pair(work) -> Iterator[tuple[AgentHandle, AgentHandle]]:
    store = work / "store"
    agents: list[AgentHandle] = []
    try:
        # A short region quarantine (default 5 s) keeps the peer-death test quick.
        agents.append(
            start_agent("pe", "prefill", store, work, ["--region-quarantine-seconds", "1"])
        )
        agents.append(start_agent("de", "decode", store, work))
        yield agents[0], agents[1]
    finally:
        for a in agents:
            a.stop()


def test_unknown_block_is_not_found_on_both_paths(pair):
    pe, de = pair[0].client(), pair[1].client()
    chain = chain_for(1, 3)
    de.seed_synthetic(chain[:2], LAYOUT)
    missing = chain[2].block_hash.hex()
    for path, endpoint in ((ReadPath.PE_READ, ""), (ReadPath.DE_READ, pair[1].endpoint)):
        code, details = code_of(
            lambda p=path, e=endpoint: pe.load("unknown", chain, LAYOUT, p, decode_endpoint=e)
        )
        assert code == grpc.StatusCode.NOT_FOUND and missing in details
    # Still serving: the known blocks load and verify.
    pe.load("known", chain[:2], LAYOUT, ReadPath.DE_READ, decode_endpoint=pair[1].endpoint)
    wait_for("buffers freed", lambda: buffers_whole(pe) and buffers_whole(de))


def test_bad_input_names_the_field(pair):
    pe, de = pair[0].client(), pair[1].client()
    chain = chain_for(2, 2)
    de.seed_synthetic(chain, LAYOUT)
    good = [
        agent_pb2.BlockRef(block_hash=b.block_hash, parent_hash=b.parent_hash, tokens=64)
        for b in chain
    ]

    def load(**overrides):  # type: ignore[no-untyped-def]
        request = agent_pb2.LoadRequest(
            request_id="bad", blocks=good, layout=layout_msg(LAYOUT), read_path=ReadPath.PE_READ
        )
        for key, value in overrides.items():
            if key == "blocks":
                del request.blocks[:]
                request.blocks.extend(value)
            elif key == "layout":
                request.layout.CopyFrom(value)
            else:
                setattr(request, key, value)
        return lambda: list(pe.stub.Load(request, timeout=30))

    cases = [
        (
            load(blocks=[agent_pb2.BlockRef(block_hash=b"short", tokens=64)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "blocks[0].block_hash",
        ),
        (load(read_path=0), grpc.StatusCode.INVALID_ARGUMENT, "read_path is required"),
        (load(request_id=""), grpc.StatusCode.INVALID_ARGUMENT, "request_id is required"),
        (
            load(read_path=ReadPath.DE_READ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "decode_agent_endpoint",
        ),
        (
            load(read_path=ReadPath.SPLIT, decode_agent_endpoint="x:1", de_read_fraction=1.5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "de_read_fraction",
        ),
        (load(blocks=[good[1], good[0]]), grpc.StatusCode.INVALID_ARGUMENT, "does not chain"),
        (
            load(
                blocks=[
                    agent_pb2.BlockRef(
                        block_hash=chain[0].block_hash, tokens=64, token_ids=list(range(64))
                    )
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match the hash",
        ),
        (
            load(
                layout=agent_pb2.BlockLayout(layers=0, block_tokens=64, bytes_per_token_layer=1024)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "layout.layers",
        ),
        # Wrong size: the stored blocks are 4 layers x 1024 bytes.
        (
            load(
                layout=agent_pb2.BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=2048)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "stored as 4 layers",
        ),
        # More than the whole device tier (64 MiB).
        (load(missed_tokens=10**6), grpc.StatusCode.RESOURCE_EXHAUSTED, "whole buffer"),
    ]
    for call, code, text in cases:
        got_code, details = code_of(call)
        assert (got_code, text in details) == (code, True), details
    # PutBlocks: wrong total size, and data that does not match its checksum.
    block = chain_for(3, 1)[0]
    data = kvgen.block_bytes(block.block_hash, LAYOUT, 64)
    code, details = code_of(lambda: de.put_blocks([(block, data[:-1])], LAYOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "blocks[0].total_bytes" in details
    chunk = agent_pb2.BlockChunk(
        ref=agent_pb2.BlockRef(block_hash=block.block_hash, tokens=64),
        layout=layout_msg(LAYOUT),
        total_bytes=len(data),
        crc32c=123,
        data=data,
    )
    code, details = code_of(lambda: de.stub.PutBlocks(iter([chunk]), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "crc32c" in details
    assert de.lookup([block]) == (0, [False])
    assert buffers_whole(pe) and pe.health().serving


def _corrupt(store: Path, block: ChainedBlock, offset: int) -> Path:
    name = block.block_hash.hex()
    path = store / name[:2] / f"{name}.blk"
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return path


@pytest.mark.parametrize("path", [ReadPath.DE_READ, ReadPath.PE_READ])
def test_corrupt_block_file_is_never_served(pair, work, path):
    pe, de = pair[0].client(), pair[1].client()
    chain = chain_for(10 + int(path), 4)
    de.seed_synthetic(chain, LAYOUT)
    victim = chain[2]
    # Flip one byte of layer 1's data.
    _corrupt(work / "store", victim, 4096 + 1 * 64 * 1024 + 777)
    code, details = code_of(
        lambda: pe.load("corrupt", chain, LAYOUT, path, decode_endpoint=pair[1].endpoint)
    )
    assert code == grpc.StatusCode.DATA_LOSS
    assert victim.block_hash.hex() in details and "quarantined" in details
    # Quarantined: now simply absent, on every agent sharing the store.
    code, _ = code_of(lambda: pe.load("again", chain, LAYOUT, ReadPath.PE_READ))
    assert code == grpc.StatusCode.NOT_FOUND
    assert list((work / "store" / victim.block_hash.hex()[:2]).glob("*.corrupt"))
    # The others are fine and still served, byte for byte.
    healthy = chain[:2]
    pe.load(
        "healthy", healthy, LAYOUT, path, decode_endpoint=pair[1].endpoint, release_after_load=False
    )
    assert pe.read_region("healthy") == expected_region(healthy, LAYOUT)
    pe.release("healthy")
    reader = de if path == ReadPath.DE_READ else pe
    assert reader.stat().checksum_failures >= 1
    wait_for("buffers freed", lambda: buffers_whole(pe) and buffers_whole(de))


def test_truncated_block_file_is_data_loss(pair, work):
    pe, de = pair[0].client(), pair[1].client()
    chain = chain_for(20, 2)
    de.seed_synthetic(chain, LAYOUT)
    name = chain[1].block_hash.hex()
    os.truncate(work / "store" / name[:2] / f"{name}.blk", BLOCK_FILE - 4096)
    code, details = code_of(
        lambda: pe.load("trunc", chain, LAYOUT, ReadPath.DE_READ, decode_endpoint=pair[1].endpoint)
    )
    assert code == grpc.StatusCode.DATA_LOSS and name in details
    code, details = code_of(lambda: de.read_block(chain[1].block_hash))
    assert code == grpc.StatusCode.NOT_FOUND  # quarantined


def _metric(agent: AgentHandle, name: str) -> float:
    """Sum of a counter's series on the agent's /metrics; raises when there is none."""
    return sample_value(httpx.get(f"http://{agent.metrics_address}/metrics", timeout=5).text, name)


def _slow_decode(work: Path, name: str, extra: tuple[str, ...] = ()) -> AgentHandle:
    # 0.08 Gbit/s = 10 MB/s: a 16 MiB read takes ~1.6 s, long enough to act in the middle.
    return start_agent(name, "decode", work / "store", work, ["--snic-read-gbps", "0.08", *extra])


def test_peers_dying_mid_transfer(pair, work):
    """A prefill agent dies while its decode peer reads for it: the decode agent cleans up
    and keeps serving. Then the decode agent dies while a prefill agent waits for its
    layers: the prefill agent reads the blocks from its own storage instead, the load
    completes byte for byte, the fallback is counted and named, and the prefill agent
    keeps serving and gets its buffer back."""
    chain = chain_for(30, 64)  # 16 MiB
    pair[1].client().seed_synthetic(chain, LAYOUT)
    slow = _slow_decode(work, "de-dies")
    pe_tmp: AgentHandle | None = None
    try:
        pe_tmp = start_agent("pe-dies", "prefill", work / "store", work)
        de_client = slow.client()
        pe_tmp_client = pe_tmp.client()

        def orphan_load() -> None:
            with contextlib.suppress(grpc.RpcError):
                pe_tmp_client.load(
                    "orphan", chain, LAYOUT, ReadPath.DE_READ, decode_endpoint=slow.endpoint
                )

        threading.Thread(target=orphan_load, daemon=True).start()
        wait_for("slow read started", lambda: de_client.stat().snic_inflight_bytes > 0)
        pe_tmp.kill()
        wait_for("decode buffers freed", lambda: buffers_whole(de_client), 20)
        assert de_client.health().serving and de_client.stat().read_queue_length == 0

        pe = pair[0].client()
        victim = BackgroundDeRead(
            pe, "victim", chain, LAYOUT, slow.endpoint, release_after_load=False
        )
        wait_for("slow read started", lambda: de_client.stat().snic_inflight_bytes > 0)
        slow.kill()
        assert victim.join(20)
    finally:
        if pe_tmp is not None:
            pe_tmp.kill()
        slow.kill()
    assert not victim.errors, victim.errors[0].details()
    (result,) = victim.results
    assert result.fallback_blocks == len(chain) and slow.endpoint in result.fallback_reason
    assert result.blocks_verified == len(chain)
    assert pe.read_region("victim") == expected_region(chain, LAYOUT)
    pe.release("victim")
    fallbacks = _metric(pair[0], "dualpath_agent_peer_fallbacks_total")
    assert fallbacks >= 1
    other = chain_for(31, 2)
    pair[1].client().seed_synthetic(other, LAYOUT)
    pe.load("after", other, LAYOUT, ReadPath.DE_READ, decode_endpoint=pair[1].endpoint)
    wait_for("prefill buffers freed", lambda: buffers_whole(pe), 15)


def test_kill_during_persist_leaves_the_block_absent_or_intact(work):
    """SIGKILL an agent paused inside a persist (debug hook), at three points; after a
    restart each block is absent (killed before the rename) or intact (after it)."""
    store = work / "persist-store"
    phases = {"mid-write": False, "before-rename": False, "after-rename": True}
    blocks = dict(zip(phases, chain_for(60, 3), strict=True))
    agents: dict[str, AgentHandle] = {}
    try:
        for phase in phases:
            marker = work / f"paused-{phase}"
            marker.unlink(missing_ok=True)
            agents[phase] = start_agent(
                f"persist-{phase}",
                "decode",
                store,
                work,
                env={"DUALPATH_AGENT_DEBUG_PERSIST_PAUSE": f"{phase}:{marker}"},
            )
            data = kvgen.block_bytes(blocks[phase].block_hash, LAYOUT, 64)
            threading.Thread(
                target=_quiet_put, args=(agents[phase].client(), blocks[phase], data), daemon=True
            ).start()
        for phase, agent in agents.items():
            wait_for(f"persist paused at {phase}", (work / f"paused-{phase}").exists)
            agent.kill()  # SIGKILL in the middle of the persist
    finally:
        for agent in agents.values():
            agent.kill()
    assert list(store.rglob("*.tmp"))  # the killed writers left temp files behind
    restarted = start_agent("persist-restart", "decode", store, work)
    try:
        c = restarted.client()
        for phase, present in phases.items():
            block = blocks[phase]
            data = kvgen.block_bytes(block.block_hash, LAYOUT, 64)
            assert c.lookup([block]) == (int(present), [present]), phase
            if present:
                assert c.read_block(block.block_hash) == data
            else:
                code, _ = code_of(lambda b=block: c.read_block(b.block_hash))
                assert code == grpc.StatusCode.NOT_FOUND
                c.put_blocks([(block, data)], LAYOUT)  # writing it again works
                assert c.read_block(block.block_hash) == data
        assert not list(store.rglob("*.tmp"))  # dead writers' temp files were removed
    finally:
        restarted.stop()


def _quiet_put(client: AgentClient, block: ChainedBlock, data: bytes) -> None:
    with contextlib.suppress(grpc.RpcError):
        client.put_blocks([(block, data)], LAYOUT)


def test_capacity_and_injected_disk_full(work):
    """Capacity: a block bigger than the store is refused. Disk full: a real OSError(ENOSPC)
    raised inside the write (debug injection) fails the put cleanly, leaves no partial
    file, and the agent keeps serving what it has."""
    blocks = chain_for(70, 3)
    store = work / "small-store"
    agent = start_agent(
        "enospc",
        "decode",
        store,
        work,
        ["--capacity", str(2 * BLOCK_FILE)],
        env={"DUALPATH_AGENT_DEBUG_ENOSPC_AFTER_BYTES": str(BLOCK_FILE + 100)},
    )
    try:
        c = agent.client()
        big = BlockLayout(layers=12, block_tokens=64, bytes_per_token_layer=1024)
        code, details = code_of(lambda: c.seed_synthetic(blocks[2:], big))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "capacity" in details
        c.seed_synthetic(blocks[:1], LAYOUT)
        code, details = code_of(lambda: c.seed_synthetic(blocks[1:2], LAYOUT))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "disk full" in details
        assert c.read_block(blocks[0].block_hash) == kvgen.block_bytes(
            blocks[0].block_hash, LAYOUT, 64
        )
        assert c.lookup(blocks[:2]) == (1, [True, False])
        assert not list(store.rglob("*.tmp"))
        assert c.health().serving
    finally:
        agent.stop()


def test_real_full_filesystem(work):
    mount = work / "tmpfs"
    mount.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={3 * BLOCK_FILE // 1024 + 64}k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({result.stderr.strip()}); "
            "test_capacity_and_injected_disk_full covers the ENOSPC path"
        )
    try:
        agent = start_agent("tmpfs", "decode", mount / "store", work)
        try:
            c = agent.client()
            blocks = chain_for(80, 8)
            written = 0
            for b in blocks:
                try:
                    c.seed_synthetic([b], LAYOUT)
                    written += 1
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "disk full" in exc.details()
                    break
            assert 1 <= written < len(blocks)
            assert c.read_block(blocks[0].block_hash) == kvgen.block_bytes(
                blocks[0].block_hash, LAYOUT, 64
            )
            assert not list((mount / "store").rglob("*.tmp"))
            assert c.health().serving
        finally:
            agent.stop()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_graceful_shutdown_finishes_in_flight_transfers(pair, work):
    pe = pair[0].client()
    chain = chain_for(90, 32)  # ~8 MB at 10 MB/s
    pair[1].client().seed_synthetic(chain, LAYOUT)
    slow = _slow_decode(work, "de-graceful")
    try:
        client = slow.client()
        assert client.stat().snic_read_bytes_per_s == pytest.approx(10e6)
        started = time.monotonic()
        load = BackgroundDeRead(
            pe, "graceful", chain, LAYOUT, slow.endpoint, release_after_load=False
        )
        wait_for("read started", lambda: client.stat().snic_inflight_bytes > 0)
        stat = client.stat()  # the node's storage read queue, as reported to the controller
        assert stat.read_queue_length == 1 and 0 < stat.read_queue_bytes <= 32 * BLOCK_FILE
        assert 0 < stat.read_queue_tokens <= 32 * 64
        assert slow.stop(grace_s=20) == 0  # SIGTERM: finishes the transfer, then exits 0
        assert load.join(20), "the load did not end within 20 s"
    finally:
        slow.kill()
    assert time.monotonic() - started > 0.5  # 8.4 MB at 10 MB/s: the cap paces the read
    assert load.results and not load.errors, load.errors
    assert pe.read_region("graceful") == expected_region(chain, LAYOUT)
    pe.release("graceful")


def test_shutdown_past_the_grace_period_cancels_and_the_prefill_side_falls_back(pair, work):
    """A decode agent stopping past its grace period cancels the transfer it serves (and
    exits in time); the prefill agent it served finishes the load from its own storage."""
    pe = pair[0].client()
    chain = chain_for(91, 64)
    pair[1].client().seed_synthetic(chain, LAYOUT)
    slow = _slow_decode(work, "de-impatient", ("--grace-seconds", "0.3"))
    try:
        load = BackgroundDeRead(pe, "cut", chain, LAYOUT, slow.endpoint)
        client = slow.client()
        wait_for("read started", lambda: client.stat().snic_inflight_bytes > 0)
        started = time.monotonic()
        assert slow.stop(grace_s=20) == 0
        assert time.monotonic() - started < 8
        assert load.join(20), "the load did not end within 20 s"
    finally:
        slow.kill()
    assert not load.errors, load.errors[0].details()
    assert load.results[0].fallback_blocks == len(chain) and load.results[0].fallback_reason
    wait_for("prefill buffers freed", lambda: buffers_whole(pe), 15)
