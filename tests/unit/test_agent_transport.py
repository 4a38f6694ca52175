"""Transports (NIXL POSIX and the fallback, in this process, on real files and loopback
sockets), QoS settings and request validation."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from dualpath.v1 import agent_pb2, traffic_controller_pb2
from dualpath_agent.blockhash import block_chain
from dualpath_agent.buffer import HostBuffer
from dualpath_agent.layout import PAGE, BlockLayout
from dualpath_agent.transport import (
    Desc,
    FileRead,
    PreadReader,
    QosConfig,
    ShortFile,
    SocketPeerTransport,
    TransferError,
    apply_qos,
    select_transports,
)
from dualpath_agent.validation import de_block_count, plan_blocks, token_ranges_missing

LAYOUT = BlockLayout(layers=2, block_tokens=4, bytes_per_token_layer=8)


def _files(tmp_path, sizes):
    reads, contents = [], []
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        contents.append(data)
        reads.append((path, size))
    return reads, contents


def test_pread_reader_fills_registered_memory(tmp_path):
    pool = HostBuffer(8 * PAGE, lock_pages=False).pool("host")
    reader = PreadReader([pool])
    files, contents = _files(tmp_path, [PAGE, 3 * PAGE])
    reads = [
        FileRead(files[0][0], PAGE, pool.base_address),
        FileRead(files[1][0], 3 * PAGE, pool.base_address + 2 * PAGE),
    ]
    reader.read_files(reads, 10, None)
    assert bytes(pool.host_view(0, PAGE)) == contents[0]
    assert bytes(pool.host_view(2 * PAGE, 3 * PAGE)) == contents[1]
    assert reader.direct_io  # /tmp supports O_DIRECT: reads bypass the page cache
    os.truncate(files[1][0], PAGE)
    with pytest.raises(ShortFile):
        reader.read_files(reads, 10, None)


# NIXL 1.5.1 bundles its own abseil: a process that loaded it crashes when it later loads
# grpc_tools' protoc (test_generated.py does). So NIXL runs in a child process here.
NIXL_POSIX_CHECK = """
import os, sys
from pathlib import Path
from dualpath_agent.buffer import HostBuffer
from dualpath_agent.layout import PAGE
from dualpath_agent.transport import (
    FileRead, NixlPeerTransport, NixlPosixReader, NixlRuntime, ShortFile,
)
tmp = Path(sys.argv[1])
runtime = NixlRuntime("unit-posix")
pool = HostBuffer(8 * PAGE, lock_pages=False).pool("host")
peer = NixlPeerTransport(runtime)
peer.register(pool)
reader = NixlPosixReader(runtime)
a, b = os.urandom(PAGE), os.urandom(3 * PAGE)
(tmp / "a").write_bytes(a)
(tmp / "b").write_bytes(b)
reads = [FileRead(tmp / "a", PAGE, pool.base_address),
         FileRead(tmp / "b", 3 * PAGE, pool.base_address + 2 * PAGE)]
reader.start_read(reads).wait(10, None)
assert bytes(pool.host_view(0, PAGE)) == a
assert bytes(pool.host_view(2 * PAGE, 3 * PAGE)) == b
assert reader.direct_io
os.truncate(tmp / "b", PAGE)
try:
    reader.read_files(reads, 10, None)
    raise SystemExit("short file not detected")
except ShortFile:
    pass
peer.close()
print("NIXL-POSIX-OK")
"""


def test_nixl_posix_reader_fills_registered_memory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", NIXL_POSIX_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # NIXL is the data plane, installed by `make venv`: its absence is a failure, not a skip.
    assert "No module named 'nixl" not in result.stderr, "NIXL is not installed: run make venv"
    assert "NIXL-POSIX-OK" in result.stdout, result.stderr[-2000:]


def test_socket_transport_write_read_and_notifications():
    host_a = HostBuffer(4 * PAGE, lock_pages=False).pool("a")
    host_b = HostBuffer(4 * PAGE, lock_pages=False).pool("b")
    a = SocketPeerTransport("agent-a", "127.0.0.1", ip_tos=0x68)
    b = SocketPeerTransport("agent-b", "127.0.0.1", ip_tos=0x68)
    try:
        a.register(host_a)
        b.register(host_b)
        assert a.add_peer(b.metadata()) == "agent-b"
        assert b.add_peer(a.metadata()) == "agent-a"
        host_a.host_view(0, 6)[:] = b"layer0"
        host_a.host_view(PAGE, 6)[:] = b"layer1"
        descs = [
            Desc(host_a.base_address, host_b.base_address + 100, 6),
            Desc(host_a.base_address + PAGE, host_b.base_address + 200, 6),
        ]
        a.post_write("agent-b", descs, "DRAM", "DRAM", b"xfer:0").wait(5, None)
        b.wait_notification("agent-a", b"xfer:0", 5, None)
        assert bytes(host_b.host_view(100, 6)) == b"layer0"
        assert bytes(host_b.host_view(200, 6)) == b"layer1"
        # one-sided read back into another place of a
        a.post_read(
            "agent-b",
            [Desc(host_a.base_address + 2 * PAGE, host_b.base_address + 100, 6)],
            "DRAM",
            "DRAM",
        ).wait(5, None)
        assert bytes(host_a.host_view(2 * PAGE, 6)) == b"layer0"
        # the receiver refuses addresses outside its registered memory; the link survives
        bad = [Desc(host_a.base_address, 0x1000, 6)]
        with pytest.raises(TransferError, match="registered memory"):
            a.post_write("agent-b", bad, "DRAM", "DRAM", b"").wait(5, None)
        a.post_write("agent-b", descs[:1], "DRAM", "DRAM", b"xfer:1").wait(5, None)
        b.wait_notification("agent-a", b"xfer:1", 5, None)
        with pytest.raises(TransferError, match="no notification"):
            b.wait_notification("agent-a", b"never", 0.2, None)
        with pytest.raises(TransferError, match="another transport"):
            a.add_peer(b"\x00nixl-binary-metadata")
    finally:
        a.close()
        b.close()


def test_explicit_fallback_is_reported(tmp_path):
    pool = HostBuffer(PAGE, lock_pages=False).pool("host")
    chosen = select_transports("fallback", "fb-agent", "127.0.0.1", [pool], QosConfig(dscp=26))
    try:
        assert chosen.peer.kind == "fallback-tcp" and chosen.storage.kind == "fallback-pread"
        assert "--transport fallback" in chosen.fallback_reason
    finally:
        chosen.peer.close()
    with pytest.raises(ValueError, match="--transport"):
        select_transports("magic", "x", "127.0.0.1", [pool], QosConfig())


def test_apply_qos_exports_ucx_settings(monkeypatch):
    monkeypatch.delenv("UCX_IB_TRAFFIC_CLASS", raising=False)
    monkeypatch.delenv("UCX_IB_SL", raising=False)
    applied = apply_qos(QosConfig(traffic_class=106, service_level=3, dscp=26))
    assert os.environ["UCX_IB_TRAFFIC_CLASS"] == "106" and os.environ["UCX_IB_SL"] == "3"
    assert applied["UCX_IB_TRAFFIC_CLASS"] == "106" and applied["UCX_IB_SL"] == "3"
    assert applied["IP_TOS"].startswith("0x68")  # DSCP 26 (AF31) << 2
    assert "ib_devices" in applied
    assert apply_qos(QosConfig()) == {}


# ----- validation ---------------------------------------------------------------------------
def _refs(n: int, partial_last: bool = False):
    chain = block_chain(list(range(n * 4 - (2 if partial_last else 0))), 4, include_partial=True)
    return [
        agent_pb2.BlockRef(block_hash=b.block_hash, parent_hash=b.parent_hash, tokens=b.tokens)
        for b in chain
    ]


def test_plan_blocks_places_tokens_and_checks_the_chain():
    refs = _refs(3, partial_last=True)
    plans = plan_blocks(refs, LAYOUT, first_token=10)
    assert [p.first_token for p in plans] == [10, 14, 18] and plans[-1].tokens == 2
    with pytest.raises(ValueError, match=r"blocks\[1\].parent_hash does not chain"):
        plan_blocks([refs[0], refs[2]], LAYOUT)
    with pytest.raises(ValueError, match="only the last block may be partial"):
        plan_blocks([refs[2], refs[0]], LAYOUT)
    with pytest.raises(ValueError, match="full blocks"):
        plan_blocks(refs, LAYOUT, full_only=True)
    bad = agent_pb2.BlockRef(block_hash=b"abc", tokens=4)
    with pytest.raises(ValueError, match=r"blocks\[0\].block_hash: expected a 16-byte hash"):
        plan_blocks([bad], LAYOUT)
    with pytest.raises(ValueError, match=r"tokens must be in 1\.\.4"):
        plan_blocks([agent_pb2.BlockRef(block_hash=b"x" * 16, tokens=5)], LAYOUT)
    with pytest.raises(ValueError, match="blocks is empty"):
        plan_blocks([], LAYOUT)


def test_token_ids_must_match_the_hash():
    chain = block_chain([5, 6, 7, 8], 4)
    good = agent_pb2.BlockRef(block_hash=chain[0].block_hash, tokens=4, token_ids=[5, 6, 7, 8])
    plan_blocks([good], LAYOUT)
    forged = agent_pb2.BlockRef(block_hash=chain[0].block_hash, tokens=4, token_ids=[5, 6, 7, 9])
    with pytest.raises(ValueError, match="does not match the hash"):
        plan_blocks([forged], LAYOUT)


def test_split_and_gap_arithmetic():
    rp = traffic_controller_pb2.ReadPath
    assert de_block_count(rp.READ_PATH_PE_READ, 0, 10) == 0
    assert de_block_count(rp.READ_PATH_DE_READ, 0, 10) == 10
    assert de_block_count(rp.READ_PATH_SPLIT, 0.34, 10) == 3
    with pytest.raises(ValueError, match="de_read_fraction"):
        de_block_count(rp.READ_PATH_SPLIT, 1.0, 10)
    with pytest.raises(ValueError, match="read_path is required"):
        de_block_count(rp.READ_PATH_UNSPECIFIED, 0, 10)
    assert token_ranges_missing(100, [(0, 20), (40, 60)]) == [(20, 40), (60, 100)]
    assert token_ranges_missing(50, [(0, 50)]) == []


def test_notification_box_wakes_waiters():
    from dualpath_agent.transport import NotificationBox

    box = NotificationBox()
    threading.Timer(0.05, lambda: box.add("peer", [b"t:1"])).start()
    box.wait("peer", b"t:1", 5, None)
    assert box.waiting == 0


def test_serve_groups_split_blocks_by_bytes():
    from dualpath_agent.serve import groups_of

    assert groups_of([10, 10, 10, 10, 10], 25) == [[0, 1], [2, 3], [4]]
    assert groups_of([40, 10], 25) == [[0], [1]]  # a block bigger than a group is a group
    assert groups_of([10, 10, 10], 0) == [[0, 1, 2]]  # 0 = everything in one group


def test_notification_box_polls_for_all_waiters():
    """With a fetch function (NIXL), one waiter at a time polls and hands out notifications
    meant for the others."""
    from dualpath_agent.transport import NotificationBox

    calls = {"n": 0}

    def fetch() -> dict[str, list[bytes]]:
        calls["n"] += 1
        return {"peer": [b"t:1", b"t:2"]} if calls["n"] == 3 else {}

    box = NotificationBox(fetch=fetch)
    got: list[bytes] = []
    threads = [
        threading.Thread(target=lambda m=m: (box.wait("peer", m, 5, None), got.append(m)))
        for m in (b"t:1", b"t:2")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(got) == [b"t:1", b"t:2"] and box.waiting == 0
    with pytest.raises(TransferError, match="no notification"):
        box.wait("peer", b"t:3", 0.1, None)


def test_cleanup_failures_are_logged_not_raised(caplog):
    from dualpath_agent.transport import release_logged
    from dualpath_agent.transport.base import PendingTransfer, settle

    def broken() -> None:
        raise RuntimeError("deregister failed")

    class Stuck(PendingTransfer):
        def wait(self, timeout_s, cancelled):
            raise TransferError("timed out")

    with caplog.at_level("WARNING", logger="dualpath_agent.transport.base"):
        release_logged(broken, "NIXL registration")
        settle([Stuck(), Stuck()], 0.1, "serve-layers write")
    failures = [r for r in caplog.records if r.getMessage() == "release failed"]
    assert [(r.what, r.error) for r in failures] == [
        ("NIXL registration", "deregister failed"),
        ("serve-layers write", "timed out"),
        ("serve-layers write", "timed out"),
    ]
