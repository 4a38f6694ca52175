"""Start `dualpath controller` as a child process (tests, demo, benchmarks).

The child writes a ready file with its ports once it serves; `ControllerProcess.stop()`
sends SIGTERM to that pid (SIGKILL after a grace period). Use it as a context manager so
the process is stopped even when the caller fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


class ControllerProcess:
    def __init__(
        self,
        *,
        listen: str = "127.0.0.1:0",
        policy: str = "paper",
        params: dict[str, object] | None = None,
        liveness_timeout_s: float = 5.0,
        report_interval_ms: int = 500,
        metrics_port: int = 0,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dualpath-controller-")
        self.ready_file = Path(self._tmp.name) / "ready.json"
        self.log_path = log_path or Path(self._tmp.name) / "controller.log"
        self.args = [
            sys.executable,
            "-m",
            "dualpath_cli.main",
            "controller",
            "--listen",
            listen,
            "--metrics-port",
            str(metrics_port),
            "--policy",
            policy,
            "--liveness-timeout-s",
            str(liveness_timeout_s),
            "--report-interval-ms",
            str(report_interval_ms),
            "--ready-file",
            str(self.ready_file),
        ]
        for key, value in (params or {}).items():
            self.args += ["--policy-param", f"{key}={value}"]
        self.args += extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 30.0) -> ControllerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"controller exited with {self.proc.returncode}: {self.log_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"controller not ready after {timeout_s}s: {self.log_text()}")
            time.sleep(0.05)
        ready = json.loads(self.ready_file.read_text())
        self.grpc_port = int(ready["grpc_port"])
        self.metrics_port = ready["metrics_port"]
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

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

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._tmp.cleanup()
