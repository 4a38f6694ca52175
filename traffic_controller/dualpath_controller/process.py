"""Start `dualpath controller` as a child process (tests, demo, benchmarks).

The child writes a ready file with its ports once it serves; `ControllerProcess.stop()`
sends SIGTERM to that pid (SIGKILL after a grace period). Use it as a context manager so
the process is stopped even when the caller fails.

Security: `tls_dir` makes it serve mutual TLS with that identity directory; without it
(and without --tls-dir in extra_args) the launcher asks for --insecure, which the
controller only does when asked (server-only TLS via --tls-cert-file included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualpath_common.child import ReadyFileProcess, cli_command, security_args


class ControllerProcess(ReadyFileProcess):
    name = "controller"

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
        tls_dir: Path | None = None,
    ) -> None:
        super().__init__([], log_path)
        self.args = cli_command(
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
        )
        for key, value in (params or {}).items():
            self.args += ["--policy-param", f"{key}={value}"]
        extra = extra_args or []
        self.args += [*security_args(tls_dir, extra), *extra]
        self.grpc_port = 0
        self.metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.grpc_port = int(ready["grpc_port"])
        self.metrics_port = ready["metrics_port"]
