"""`python -m tests.support.localkube` stops every child it started when it gets SIGINT
(also when started in the background, where SIGINT arrives ignored) or SIGTERM, and the
kernel stops them (PR_SET_PDEATHSIG) when it is SIGKILLed and cannot clean up."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.localkube import REPO
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Started:
    proc: subprocess.Popen[str]
    workdir: Path
    pids: dict[str, int]


def ignore_sigint() -> None:
    """What a non-interactive shell does to a job it starts with `&`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_localkube(background: bool) -> Started:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.localkube"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ignore_sigint if background else None,
    )
    lines: queue.Queue[str] = queue.Queue()
    # A reader thread: select() on a buffered pipe misses lines already read into the buffer.

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("# {"):
            info = json.loads(line[2:])
            return Started(proc, Path(info["workdir"]), info["pids"])
    proc.kill()
    proc.wait()
    raise AssertionError(f"localkube did not report its children: {''.join(seen)[-3000:]}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def alive_children(started: Started) -> list[str]:
    """Processes still running that belong to this control plane: a reported pid whose
    command line still names its data dir (not a reused pid), or any process naming it."""
    mine = str(started.workdir)
    left = [
        f"{name} ({pid}): {cmdline(pid)[:120]}"
        for name, pid in started.pids.items()
        if mine in cmdline(pid)
    ]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in started.pids.values():
            line = cmdline(int(entry.name))
            if mine in line and int(entry.name) != os.getpid():
                left.append(f"({entry.name}): {line[:120]}")
    return left


def check_stopped(started: Started, expect_rc: int | None) -> None:
    rc = started.proc.wait(timeout=60)
    if expect_rc is not None:
        assert rc == expect_rc, started.proc.stdout.read() if started.proc.stdout else ""
    wait_for("every child stopped", lambda: not alive_children(started), timeout=30)


@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGTERM, False)],
    ids=["sigint-background", "sigint", "sigterm"],
)
def test_a_stop_signal_stops_every_child(sig: signal.Signals, background: bool) -> None:
    started = start_localkube(background)
    try:
        assert set(started.pids) >= {"etcd", "kube-apiserver"}
        assert not [n for n, pid in started.pids.items() if not cmdline(pid)], "not all up"
        started.proc.send_signal(sig)
        check_stopped(started, expect_rc=0)
        # A clean stop also removes the state directory.
        assert not started.workdir.exists()
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()


def test_sigkill_leaves_no_child_behind() -> None:
    started = start_localkube(background=True)
    try:
        started.proc.kill()
        check_stopped(started, expect_rc=-signal.SIGKILL)
    finally:
        shutil.rmtree(started.workdir, ignore_errors=True)  # nobody was left to remove it
