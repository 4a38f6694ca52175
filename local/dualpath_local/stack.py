"""The local stack's processes: one traffic controller and one agent per node, on loopback.

Every process is a real `dualpath ...` child started through its component's launcher
(`dualpath_agent.launch.start_agent`, `dualpath_controller.process.ControllerProcess`) and
stopped by its own pid: SIGTERM, then SIGKILL after a grace period. `LocalStack.close()`
is idempotent and runs from `finally`, so an error or Ctrl-C never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_agent.store import BlockStore
from dualpath_common import tls
from dualpath_controller.process import ControllerProcess

from dualpath_local.identities import LocalIdentities

log = logging.getLogger("dualpath.local")


@dataclass(frozen=True)
class NodeSpec:
    """One emulated node: an agent with its own block store and storage-NIC cap."""

    name: str
    role: str  # "prefill" | "decode"
    snic_read_bytes_per_s: float
    buffer_bytes: int
    device_bytes: int

    @property
    def engine_id(self) -> str:
        return f"{self.name}/gpu0"


def node_specs(
    prefill_nodes: int,
    decode_nodes: int,
    snic_read_bytes_per_s: float,
    buffer_bytes: int,
    device_bytes: int,
) -> list[NodeSpec]:
    if prefill_nodes < 1 or decode_nodes < 1:
        raise ValueError(
            f"need at least 1 prefill and 1 decode node, got {prefill_nodes}P{decode_nodes}D"
        )
    return [
        NodeSpec(f"prefill-{i}", "prefill", snic_read_bytes_per_s, buffer_bytes, device_bytes)
        for i in range(prefill_nodes)
    ] + [
        NodeSpec(f"decode-{i}", "decode", snic_read_bytes_per_s, buffer_bytes, device_bytes)
        for i in range(decode_nodes)
    ]


class StoreLinks:
    """The nodes' block stores as one shared store: a block persisted in one node's store
    is hard-linked into every other node's store, the way a distributed store (3FS) makes
    what one node writes readable from all. One copy of the bytes on disk; every node still
    reads it through its own agent, O_DIRECT, under its own storage-NIC cap, and verifies
    it. Agents find a linked block on their next lookup (a miss in their index probes the
    directory)."""

    def __init__(self, roots: dict[str, Path]) -> None:
        # BlockStore is used for its file naming only (path_for); the agents own the stores.
        self._stores = {node: BlockStore(root) for node, root in roots.items()}
        self.links_made = 0

    def replicate(self, block_hashes: Iterable[bytes], source: str) -> int:
        """Link blocks from `source`'s store into every other store; returns links made."""
        made = 0
        src_store = self._stores[source]
        for block_hash in block_hashes:
            src = src_store.path_for(block_hash)
            for node, store in self._stores.items():
                if node == source:
                    continue
                dst = store.path_for(block_hash)
                dst.parent.mkdir(exist_ok=True)
                try:
                    os.link(src, dst)
                    made += 1
                except FileExistsError:
                    pass  # already there (a shared prefix, or written there first)
        self.links_made += made
        return made


@dataclass
class LocalStack:
    workdir: Path
    nodes: list[NodeSpec]
    agents: dict[str, AgentHandle] = field(default_factory=dict)
    controller: ControllerProcess | None = None
    transport: str = "auto"
    # Held while a process is (re)started or killed, so the supervisor never races a
    # planned restart.
    lifecycle: threading.RLock = field(default_factory=threading.RLock)
    # (policy, params, tag) of the running controller: a restart starts the same one.
    _controller_launch: tuple[str, dict[str, object], str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller_exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # Every process this stack started, in order: (name, pid). Kept after they stop, so a
    # caller can check that none is left.
    started: list[tuple[str, int]] = field(default_factory=list)
    # Mutual TLS for every process (a throwaway CA in the workdir); None: plaintext.
    identities: LocalIdentities | None = None

    def _tls_dir(self, role: str, name: str) -> Path | None:
        return None if self.identities is None else self.identities.directory(role, name)

    def client_identity(self, name: str = "driver") -> tls.IdentityDir | None:
        """The identity the demo's driver calls agents and the controller with: it stands
        in for the engines, so it has the engine role."""
        return None if self.identities is None else self.identities.identity("engine", name)

    # ----- agents ------------------------------------------------------------------------
    def store_dir(self, node: str) -> Path:
        return self.workdir / "stores" / node

    def start_agents(self, transport: str = "auto") -> None:
        """Start every node's agent, in parallel (each one imports NIXL: ~1-3 s)."""
        self.transport = transport
        errors: list[BaseException] = []

        def start(spec: NodeSpec) -> None:
            try:
                handle = self._launch_agent(spec)
            except BaseException as exc:
                errors.append(exc)
                return
            with self._lock:
                self.agents[spec.name] = handle
                self.started.append((f"agent {spec.name}", handle.pid))

        threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in self.nodes]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException:
            # Interrupted: let the starts finish (each is bounded by its timeout) so every
            # agent that did start is in self.agents and gets stopped by close().
            for t in threads:
                t.join()
            raise
        finally:
            self.write_state()
        if errors:
            raise errors[0]

    def _launch_agent(self, spec: NodeSpec, listen: str = "127.0.0.1:0") -> AgentHandle:
        return start_agent(
            spec.name,
            spec.role,
            self.store_dir(spec.name),
            self.workdir / "agents",
            extra_args=[
                "--listen",
                listen,
                "--snic-read-gbps",
                f"{spec.snic_read_bytes_per_s * 8 / 1e9:.6f}",
                "--transport",
                self.transport,
                "--grace-seconds",
                "3",
                "--hold-seconds",
                "300",
                "--log-level",
                "WARNING",
            ],
            buffer_bytes=str(spec.buffer_bytes),
            device_bytes=str(spec.device_bytes),
            timeout_s=90.0,
            tls_dir=self._tls_dir("agent", f"agent-{spec.name}"),
        )

    def relaunch_agent(self, node: str, graceful: bool = False) -> AgentHandle:
        """Start a node's agent again on the same port (its clients reconnect), after
        stopping the old process (gracefully, or SIGKILL if it still runs). The new agent
        rebuilds its block index from the store directory."""
        spec = next(n for n in self.nodes if n.name == node)
        with self.lifecycle:
            old = self.agents[node]
            if graceful:
                _stop_agent(old)
            else:
                old.kill()
            handle = self._launch_agent(spec, listen=old.endpoint)
            with self._lock:
                self.agents[node] = handle
                self.started.append((f"agent {node}", handle.pid))
            self.write_state()
        log.warning("agent started again", extra={"node": node, "pid": handle.pid})
        return handle

    # ----- chaos (dualpath_local.chaos.ChaosTarget) ----------------------------------------
    def kill(self, target: str) -> None:
        """SIGKILL a node's agent or the controller; the supervisor brings it back."""
        with self.lifecycle:
            if target == "controller":
                if self.controller is not None:
                    self.controller.kill()
            else:
                self.agents[target].kill()

    def restart(self, target: str) -> None:
        """Stop gracefully and start again at once, on the same port."""
        if target == "controller":
            self.relaunch_controller(graceful=True)
        else:
            self.relaunch_agent(target, graceful=True)

    def serving(self, target: str) -> bool:
        """Whether the target's current process runs (a (re)start returns once it serves)."""
        with self.lifecycle:
            if target == "controller":
                c = self.controller
                return c is not None and c.proc is not None and c.proc.poll() is None
            handle = self.agents.get(target)
            return handle is not None and handle.alive()

    def store_links(self) -> StoreLinks:
        return StoreLinks({n.name: self.store_dir(n.name) for n in self.nodes})

    def endpoint(self, node: str) -> str:
        return self.agents[node].endpoint

    # ----- controller --------------------------------------------------------------------
    def start_controller(self, policy: str, params: dict[str, object], tag: str) -> str:
        """(Re)start the controller with a policy; returns its gRPC target."""
        with self.lifecycle:
            self.stop_controller()
            return self._launch_controller(policy, params, tag, "127.0.0.1:0")

    def relaunch_controller(self, graceful: bool = False) -> str:
        """Start the controller again on the same port with the same policy. It starts
        empty: engines re-register and their reports rebuild the booked load."""
        with self.lifecycle:
            old, launch = self.controller, self._controller_launch
            if old is None or launch is None:
                raise RuntimeError("no controller to start again")
            if graceful:
                old.stop()
            else:
                old.kill()
            policy, params, tag = launch
            target = self._launch_controller(policy, params, tag, old.target)
        log.warning("controller started again", extra={"target": target})
        return target

    def _launch_controller(
        self, policy: str, params: dict[str, object], tag: str, listen: str
    ) -> str:
        controller = ControllerProcess(
            listen=listen,
            policy=policy,
            params=params,
            report_interval_ms=100,
            liveness_timeout_s=10.0,
            log_path=self.workdir / f"controller-{tag}.log",
            tls_dir=self._tls_dir("controller", "controller"),
        )
        self.controller = controller
        self._controller_launch = (policy, params, tag)
        # Registered before it starts: an interrupted start is still stopped by close().
        self._controller_exit.push(controller)
        try:
            controller.start(timeout_s=60.0)
        finally:
            if controller.proc is not None:
                self.started.append((f"controller {tag}", controller.proc.pid))
            self.write_state()
        return controller.target

    def stop_controller(self) -> None:
        with self.lifecycle:
            self.controller = None
            self._controller_launch = None
            self._controller_exit.close()

    # ----- lifecycle ---------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """Endpoints and pids of what runs now (also written to <workdir>/stack.json)."""
        c = self.controller
        return {
            "controller": None
            if c is None or c.proc is None
            else {
                "grpc": c.target,
                "metrics": f"127.0.0.1:{c.metrics_port}",
                "pid": c.proc.pid,
                "policy": c.args[c.args.index("--policy") + 1],
            },
            "agents": {
                node: {
                    "role": h.role,
                    "grpc": h.endpoint,
                    "metrics": h.metrics_address,
                    "pid": h.pid,
                    "store": str(self.store_dir(node)),
                    "log": str(h.log_path),
                }
                for node, h in self.agents.items()
            },
            "started": [{"name": n, "pid": p} for n, p in self.started],
        }

    def write_state(self) -> None:
        path = self.workdir / "stack.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        tmp.replace(path)

    def cpu_seconds(self) -> float:
        """CPU time used so far by this stack's running processes (Linux /proc)."""
        return sum(_process_cpu_s(pid) for pid in self.pids())

    def pids(self) -> list[int]:
        pids = [a.pid for a in self.agents.values()]
        if self.controller is not None and self.controller.proc is not None:
            pids.append(self.controller.proc.pid)
        return pids

    def alive(self) -> list[str]:
        """Names of this stack's processes still running."""
        names = [n for n, a in self.agents.items() if a.alive()]
        c = self.controller
        if c is not None and c.proc is not None and c.proc.poll() is None:
            names.append("controller")
        return names

    def close(self) -> None:
        """Stop every process by pid (controller first: engines stop being scheduled)."""
        with contextlib.suppress(Exception):
            self.stop_controller()
        handles: Sequence[AgentHandle] = list(self.agents.values())
        threads = [threading.Thread(target=_stop_agent, args=(h,), daemon=True) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.agents.clear()
        with contextlib.suppress(OSError):
            self.write_state()


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat; 12 and 13 after "pid (comm)" and state.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_agent(handle: AgentHandle) -> None:
    try:
        handle.stop(grace_s=10.0)
    except Exception as exc:  # still try SIGKILL: never leave it behind
        log.warning("agent stop failed", extra={"node": handle.node, "error": str(exc)})
        with contextlib.suppress(Exception):
            handle.kill()
