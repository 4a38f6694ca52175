"""Start `dualpath router` as a child process (tests, demo, benchmarks).

The child writes a ready file with its port once it serves; `RouterProcess.stop()` sends
SIGTERM to that pid (SIGKILL after a grace period). Use it as a context manager so the
process is stopped even when the caller fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


class RouterProcess:
    def __init__(
        self,
        *,
        controller: str,
        engines: Sequence[str],
        hash_namespace: str,
        listen: str = "127.0.0.1:0",
        block_tokens: int = 64,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        """`engines`: `--engine` specs (id=...,role=...,url=...,node=...,agent=...)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="dualpath-router-")
        self.ready_file = Path(self._tmp.name) / "ready.json"
        self.log_path = log_path or Path(self._tmp.name) / "router.log"
        self.args = [
            sys.executable,
            "-m",
            "dualpath_cli.main",
            "router",
            "--listen",
            listen,
            "--controller",
            controller,
            "--block-tokens",
            str(block_tokens),
            "--hash-namespace",
            hash_namespace,
            "--ready-file",
            str(self.ready_file),
            "--json-logs",
        ]
        for spec in engines:
            self.args += ["--engine", spec]
        self.args += list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> RouterProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"router exited with {self.proc.returncode}: {self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"router not ready after {timeout_s}s: {self.log_text()}")
            time.sleep(0.05)
        self.port = int(json.loads(self.ready_file.read_text())["port"])
        return self

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

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.ready_file.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._tmp.cleanup()
