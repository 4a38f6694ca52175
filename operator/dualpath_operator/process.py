"""Start `dualpath operator` as a child process (integration tests, the operator bench).

The child serves /metrics and /readyz on a port it picks and writes it to its ready file;
`stop()` sends SIGTERM to that pid (SIGKILL after a grace period), which hands the lease
over. Use it as a context manager so the process is stopped even when the caller fails.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualpath_common.child import ReadyFileProcess, cli_command


class OperatorProcess(ReadyFileProcess):
    name = "operator"

    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespaces: Sequence[str],
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        super().__init__([], log_path)
        scope = [arg for ns in namespaces for arg in ("--namespace", ns)]
        self.args = cli_command(
            "operator",
            *scope,
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            "0",
            "--ready-file",
            str(self.ready_file),
            *extra_args,
        )
        self.metrics_port = 0

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.metrics_port = int(ready["metrics_port"])

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of a GET on the observability port; (0, error) when it does
        not answer (stopped, or not up yet)."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def readyz(self) -> str:
        return self.get("/readyz")[1]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
