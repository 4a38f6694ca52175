"""A component started as a child process that writes a ready file (JSON) once it serves:
started, waited for, stopped by its pid (SIGTERM, then SIGKILL after a grace period).
Tests, the local stacks and benchmarks start the agents, the controller and the router this
way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def cli_command(subcommand: str, *args: str) -> list[str]:
    """`dualpath <subcommand> <args>`, run by this interpreter (so the child sees the same
    virtual environment as its parent)."""
    return [sys.executable, "-m", "dualpath_cli.main", subcommand, *args]


def security_args(tls_dir: Path | None, extra_args: Sequence[str]) -> list[str]:
    """--tls-dir for `tls_dir`; without one, --insecure unless extra_args already choose: the
    components serve plaintext only when asked."""
    if tls_dir is not None:
        return ["--tls-dir", str(tls_dir)]
    if "--tls-dir" in extra_args or "--insecure" in extra_args:
        return []
    return ["--insecure"]


def write_ready_file(path: Path, ready: Mapping[str, Any]) -> None:
    """The child's side: write `ready` (ports) and its pid as JSON, atomically (the parent
    polls for the file and must never read half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**ready, "pid": os.getpid()}))
    tmp.replace(path)


class ReadyFileProcess:
    """Subclasses build `args` (which must pass `self.ready_file` to the child) and read
    what they need from the ready file in `on_ready`."""

    name = "process"

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: variables set for the child on top of this process's environment."""
        self._tmp = tempfile.TemporaryDirectory(prefix=f"dualpath-{self.name}-")
        self.ready_file = Path(self._tmp.name) / "ready.json"
        self.log_path = log_path or Path(self._tmp.name) / f"{self.name}.log"
        self.args = list(args)
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def on_ready(self, ready: dict[str, Any]) -> None:
        """Read the ready file's contents (ports)."""

    def start(self, timeout_s: float = 30.0) -> Self:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout_s}s: {self.log_text()}")
            time.sleep(0.05)
        self.on_ready(json.loads(self.ready_file.read_text()))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def kill(self) -> None:
        """Crash it (SIGKILL): no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.ready_file.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._tmp.cleanup()
