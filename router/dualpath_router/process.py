"""Start `dualpath router` as a child process (tests, demo, benchmarks).

The child writes a ready file with its port once it serves; `RouterProcess.stop()` sends
SIGTERM to that pid (SIGKILL after a grace period). Use it as a context manager so the
process is stopped even when the caller fails.

Security: `tls_dir` makes it call the controller and agents with mutual TLS with that
identity directory; without it (and without --tls-dir in extra_args) the launcher asks for
--insecure, which the router only does when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualpath_common.child import ReadyFileProcess, cli_command, security_args


def front_door_args(
    command: str,
    *,
    controller: str,
    hash_namespace: str,
    listen: str,
    block_tokens: int,
    ready_file: Path,
    engines: Sequence[str] = (),
    engines_file: Path | None = None,
    tls_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of `dualpath router` or `dualpath picker` (they share their flags)."""
    args = cli_command(
        command,
        "--listen",
        listen,
        "--controller",
        controller,
        "--block-tokens",
        str(block_tokens),
        "--hash-namespace",
        hash_namespace,
        "--ready-file",
        str(ready_file),
        "--json-logs",
    )
    for spec in engines:
        args += ["--engine", spec]
    if engines_file is not None:
        args += ["--engines-file", str(engines_file)]
    return [*args, *security_args(tls_dir, extra_args), *extra_args]


class RouterProcess(ReadyFileProcess):
    name = "router"

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
        tls_dir: Path | None = None,
    ) -> None:
        """`engines`: `--engine` specs (id=...,role=...,url=...,node=...,agent=...)."""
        super().__init__([], log_path)
        self.args = front_door_args(
            "router",
            controller=controller,
            hash_namespace=hash_namespace,
            listen=listen,
            block_tokens=block_tokens,
            ready_file=self.ready_file,
            engines=engines,
            tls_dir=tls_dir,
            extra_args=extra_args,
        )
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.port = int(ready["port"])
