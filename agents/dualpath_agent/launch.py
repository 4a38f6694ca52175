"""Start and stop agent processes (tests, demo, benchmarks): each agent is a real
`dualpath agent` subprocess; its ports are learned from its ready file; it is stopped by
its own pid (SIGTERM, then SIGKILL after a timeout).

Security: with `tls_dir` the agent serves mutual TLS with that identity and handles'
clients use it too; without one the launcher asks for plaintext (`--insecure`), which the
agent only does when asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpath_common import tls

from dualpath_agent.client import AgentClient


class AgentStartError(RuntimeError):
    pass


@dataclass
class AgentHandle:
    node: str
    role: str
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path
    _clients: list[AgentClient] = field(default_factory=list)
    identity: tls.IdentityDir | None = None

    @property
    def endpoint(self) -> str:
        return str(self.info["grpc"])

    @property
    def metrics_address(self) -> str:
        return str(self.info["metrics"])

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, timeout_s: float = 120.0) -> AgentClient:
        c = AgentClient(self.endpoint, timeout_s, identity=self.identity)
        self._clients.append(c)
        return c

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (graceful), SIGKILL if it does not exit in time; returns the exit code."""
        for c in self._clients:
            c.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (crash tests)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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
    if tls_dir is not None:
        security = ["--tls-dir", str(tls_dir)]
    elif "--tls-dir" in extra_args or "--insecure" in extra_args:
        security = []
    else:
        security = ["--insecure"]
    ready = workdir / f"{node}.ready.json"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{node}.log"
    cmd = [
        sys.executable,
        "-m",
        "dualpath_cli.main",
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
        "--ready-file",
        str(ready),
        *security,
        *extra_args,
    ]
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait()
            tail = log_path.read_text(errors="replace")[-3000:]
            raise AgentStartError(f"agent {node} did not become ready:\n{tail}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    identity = tls.IdentityDir.load(tls_dir) if tls_dir is not None else None
    return AgentHandle(node, role, process, info, log_path, identity=identity)
