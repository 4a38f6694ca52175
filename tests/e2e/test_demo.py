"""The main job end to end: `dualpath demo`, reduced, as a newcomer runs it.

Real processes (traffic controller + 1 prefill and 2 decode agents on loopback), real bytes
read from disk under a storage-NIC cap and moved between agents. The demo must show the
gain (dualpath-split vs prefill-only), verify every byte, and leave no process behind,
also when it is interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dualpath_local.stack import pid_alive

# ~20 s on 2 cores: 12 agents x 3 turns of the 32K trace scaled to 1/5, two policies.
REDUCED = [
    "--agents",
    "12",
    "--turns",
    "3",
    "--context-scale",
    "0.2",
    "--policies",
    "prefill-only,dualpath-split",
]


def _processes_mentioning(text: str) -> list[str]:
    """Command lines (other than ours) that contain `text`: agents carry their store path."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _started_pids(workdir: Path) -> list[int]:
    try:
        state = json.loads((workdir / "stack.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(p["pid"]) for p in state["started"]]


class DemoRun:
    def __init__(self, tmp: Path, extra: list[str]) -> None:
        self.workdir = tmp / "work"
        self.json = tmp / "demo.json"
        self.chart = tmp / "demo.png"
        self.output = tmp / "demo.out"
        cmd = [
            sys.executable,
            "-m",
            "dualpath_cli.main",
            "demo",
            "--engines",
            "stand-in",
            "--workdir",
            str(self.workdir),
            "--json",
            str(self.json),
            "--chart",
            str(self.chart),
            *extra,
        ]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"}
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"demo did not finish in {timeout_s} s:\n{self.text()[-3000:]}")

    def cleanup(self) -> None:
        """On a failed test: stop whatever is still running, by pid."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _started_pids(self.workdir):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    yield runs
    for run in runs:
        run.cleanup()


def _assert_nothing_left(run: DemoRun) -> None:
    pids = _started_pids(run.workdir)
    assert len(pids) >= 4, f"stack.json lists {pids}: expected 3 agents and a controller"
    assert [p for p in pids if pid_alive(p)] == []
    assert _processes_mentioning(str(run.workdir)) == []


def test_reduced_demo_shows_the_gain_with_every_byte_verified(
    tmp_path: Path, demo_run: list[DemoRun]
) -> None:
    run = DemoRun(tmp_path, REDUCED)
    demo_run.append(run)
    rc = run.wait(240)
    output = run.text()
    assert rc == 0, output[-3000:]
    result = json.loads(run.json.read_text())
    phases = {p["policy"]: p for p in result["phases"]}
    assert list(phases) == ["prefill-only", "dualpath-split"]

    # The gain: pooled storage bandwidth (3 SNICs instead of 1).
    speedup = phases["dualpath-split"]["speedup"]
    assert speedup > 1.5, f"dualpath-split only {speedup:.2f}x over prefill-only\n{output}"

    # Every byte verified: CRC32 of every layer of every block, plus byte-exact spot checks.
    assert result["checksum_failures"] == 0
    for p in phases.values():
        assert p["ok"], p
        assert p["turns"] == p["turns_expected"] == 36
        assert p["blocks_verified"] == p["blocks_expected"] > 0
        assert p["spot_checks"] >= 1 and p["spot_check_failures"] == 0
        assert p["placement_mismatches"] == 0
        assert p["errors"] == []

    # Who read: only the prefill node under prefill-only; every node under dualpath-split.
    only = {n["node"]: n for n in phases["prefill-only"]["nodes"]}
    split = {n["node"]: n for n in phases["dualpath-split"]["nodes"]}
    assert only["prefill-0"]["bytes_read"] > 0
    assert only["decode-0"]["bytes_read"] == only["decode-1"]["bytes_read"] == 0
    assert all(n["bytes_read"] > 0 for n in split.values())
    # The cap binds: the prefill node's SNIC is the bottleneck of the baseline.
    assert only["prefill-0"]["utilisation"] > 0.7

    assert run.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dualpath-split" in output and "checksum" in output
    assert result["processes_left"] == []
    _assert_nothing_left(run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_demo_stops_every_process(
    tmp_path: Path, demo_run: list[DemoRun], sig: signal.Signals
) -> None:
    run = DemoRun(tmp_path, [*REDUCED, "--turns", "20"])
    demo_run.append(run)
    log = run.workdir / "demo.log"
    deadline = time.monotonic() + 120
    while "phase started" not in (log.read_text() if log.exists() else ""):
        assert run.proc.poll() is None, run.text()[-3000:]
        assert time.monotonic() < deadline, "no phase started in 120 s"
        time.sleep(0.2)
    time.sleep(1.0)  # turns in flight: loads, commits, reads queued on the SNIC
    run.proc.send_signal(sig)
    rc = run.wait(60)
    assert rc == 130, run.text()[-3000:]
    assert "interrupted" in run.text()
    _assert_nothing_left(run)


def test_chaos_demo_loses_no_turn_when_a_decode_agent_dies_and_the_controller_restarts(
    tmp_path: Path, demo_run: list[DemoRun]
) -> None:
    """A decode node's agent is SIGKILLed mid-phase (the supervisor brings it back) and
    the controller is restarted under load: every turn still completes, byte-verified. The
    cost shows as loads that fell back to the prefill node's storage and turns played
    again; the controller drained the dead node at once and took it back when it reported."""
    # 120 turns: ~15 s on an idle 2-core machine, so the killed agent is back (supervisor
    # delay + start, ~3-5 s) before the controller restarts, and both before the end.
    chaos = "kill:decode-0@2s,restart:controller@8s"
    run = DemoRun(
        tmp_path, [*REDUCED, "--turns", "10", "--policies", "dualpath-split", "--chaos", chaos]
    )
    demo_run.append(run)
    rc = run.wait(300)
    output = run.text()
    assert rc == 0, output[-3000:]
    result = json.loads(run.json.read_text())
    (phase,) = result["phases"]
    assert phase["errors"] == [] and phase["turns"] == phase["turns_expected"] == 120
    assert phase["blocks_verified"] == phase["blocks_expected"] > 0
    assert result["checksum_failures"] == 0 and phase["spot_check_failures"] == 0
    # What the faults cost, counted: fallbacks and/or retries, reported, restarted.
    assert phase["fallbacks"] + phase["retries"] >= 1, phase
    assert phase["failures_reported"] >= 1 and phase["restarts"] >= 1
    events = {c["event"]: c for c in phase["chaos"]}
    assert set(events) == {"kill:decode-0@2s", "restart:controller@8s"}
    for c in events.values():
        assert c["error"] == "" and c["back_s"] is not None, c
    assert "turns failed" in output and "0 turns failed" in output
    # The controller drained the dead agent's engine when told, and took it back.
    controller_log = "".join(p.read_text() for p in run.workdir.glob("controller-*.log"))
    assert "agent reported failed" in controller_log
    assert "engine back in service" in controller_log
    assert result["processes_left"] == []
    _assert_nothing_left(run)
