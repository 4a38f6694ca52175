"""Start `dualpath picker` as a child process (tests, benchmarks), like `RouterProcess`:
the child writes a ready file with its ext_proc and metrics ports once it serves, and
`stop()` sends SIGTERM to that pid (SIGKILL after a grace period).

Security: `tls_dir` makes it call the controller and agents with mutual TLS with that
identity directory; without it (and without --tls-dir in extra_args) --insecure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualpath_common.child import ReadyFileProcess

from dualpath_router.process import front_door_args


class PickerProcess(ReadyFileProcess):
    name = "picker"

    def __init__(
        self,
        *,
        controller: str,
        hash_namespace: str,
        engines: Sequence[str] = (),
        engines_file: Path | None = None,
        listen: str = "127.0.0.1:0",
        block_tokens: int = 64,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        tls_dir: Path | None = None,
    ) -> None:
        """`engines`: `--engine` specs; `engines_file`: a watched --engines-file."""
        super().__init__([], log_path)
        self.args = front_door_args(
            "picker",
            controller=controller,
            hash_namespace=hash_namespace,
            listen=listen,
            block_tokens=block_tokens,
            ready_file=self.ready_file,
            engines=engines,
            engines_file=engines_file,
            tls_dir=tls_dir,
            extra_args=["--metrics-port", "0", *extra_args],
        )
        self.port = 0
        self.metrics_port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.port = int(ready["port"])
        self.metrics_port = int(ready["metrics_port"])
