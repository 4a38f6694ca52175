"""Start and stop agent processes (tests, demo, benchmarks): each agent is a real
`dualpath agent` subprocess; its ports are learned from its ready file; it is stopped by
its own pid (SIGTERM, then SIGKILL after a timeout).

Security: with `tls_dir` the agent serves mutual TLS with that identity and handles'
clients use it too; without one the launcher asks for plaintext (`--insecure`), which the
agent only does when asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dualpath_common import tls
from dualpath_common.child import ReadyFileProcess, cli_command, security_args

from dualpath_agent.client import AgentClient


class AgentHandle(ReadyFileProcess):
    """One `dualpath agent` child; `info` is its ready file (endpoints, TLS mode)."""

    name = "agent"

    def __init__(
        self,
        node: str,
        role: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        identity: tls.IdentityDir | None = None,
    ) -> None:
        super().__init__([], log_path, env)
        self.args = [*args, "--ready-file", str(self.ready_file)]
        self.node = node
        self.role = role
        self.identity = identity
        self.info: dict[str, Any] = {}
        self._clients: list[AgentClient] = []

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.info = ready

    @property
    def endpoint(self) -> str:
        return str(self.info["grpc"])

    @property
    def metrics_address(self) -> str:
        return str(self.info["metrics"])

    def client(self, timeout_s: float = 120.0) -> AgentClient:
        c = AgentClient(self.endpoint, timeout_s, identity=self.identity)
        self._clients.append(c)
        return c

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> int | None:
        """Close the handle's clients; SIGTERM (graceful), SIGKILL if it does not exit in
        time; returns the exit code."""
        for c in self._clients:
            c.close()
        return super().stop(grace_s)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def start_agent(
    node: str,
    role: str,
    store: Path,
    workdir: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    buffer_bytes: str = "64MiB",
    device_bytes: str = "64MiB",
    timeout_s: float = 60.0,
    tls_dir: Path | None = None,
) -> AgentHandle:
    """`tls_dir`: serve mutual TLS with this identity directory (and use it in the handle's
    clients); None: plaintext (`--insecure`) unless extra_args choose."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = cli_command(
        "agent",
        "--node",
        node,
        "--role",
        role,
        "--store",
        str(store),
        "--buffer-bytes",
        buffer_bytes,
        "--device-bytes",
        device_bytes,
        *security_args(tls_dir, extra_args),
        *extra_args,
    )
    identity = tls.IdentityDir.load(tls_dir) if tls_dir is not None else None
    handle = AgentHandle(node, role, cmd, workdir / f"{node}.log", env, identity)
    return handle.start(timeout_s)
