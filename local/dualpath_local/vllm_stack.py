"""A local DualPath stack with real vLLM engines: one agent per node (one shared store
directory standing for the distributed store, a storage-NIC read cap per node), one vLLM
engine per node loading its KV cache through the node's agent (DualPathConnector), a
reference engine with no connector, the traffic controller and `dualpath router` in front.
Every process is a child started here and stopped by its pid."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_common import tls
from dualpath_common.net import free_port
from dualpath_controller.policy.paper import alpha_for
from dualpath_controller.process import ControllerProcess
from dualpath_router.process import RouterProcess
from dualpath_vllm.config import kv_transfer_config
from dualpath_vllm.process import EngineProcess, EngineSpec, start_engines, stop_engines

from dualpath_local.identities import LocalIdentities

# The tiny model: 4 layers x 2 (K, V) x 2 KV heads x 32 dims x bf16.
KV_BYTES_PER_TOKEN = 1024
BLOCK_TOKENS = 64
# The name clients put in "model" (vLLM would otherwise answer only to the model's path).
SERVED_MODEL = "tiny-llama"
# No prefix cache of their own: as in the paper, engines cannot hold every agent's context
# between turns, so each turn restores it from storage.
ENGINE_ARGS = ["--no-enable-prefix-caching", "--served-model-name", SERVED_MODEL]


@dataclass(frozen=True)
class VllmStackConfig:
    workdir: Path
    model_dir: Path
    prefill_nodes: int = 1
    decode_nodes: int = 2
    snic_read_bytes_per_s: float = 1e6
    kv_cache_gib: float = 0.25
    reference: bool = True

    def nodes(self) -> list[tuple[str, str]]:
        return [(f"prefill-{i}", "prefill") for i in range(self.prefill_nodes)] + [
            (f"decode-{i}", "decode") for i in range(self.decode_nodes)
        ]


@dataclass
class VllmStack:
    config: VllmStackConfig
    agents: dict[str, AgentHandle] = field(default_factory=dict)
    engines: dict[str, EngineProcess] = field(default_factory=dict)
    reference: EngineProcess | None = None
    controller: ControllerProcess | None = None
    router: RouterProcess | None = None
    # Mutual TLS between every process, with a throwaway CA in the workdir (start()).
    identities: LocalIdentities | None = None

    def client_identity(self) -> tls.IdentityDir | None:
        """The demo driver's own calls to agents (Stat) use an engine identity."""
        return None if self.identities is None else self.identities.identity("engine", "driver")

    @property
    def store(self) -> Path:
        return self.config.workdir / "store"

    @property
    def namespace(self) -> str:
        # The connector's default hash namespace: the model as vLLM names it (--model).
        return str(self.config.model_dir)

    def start(self, policy: str) -> None:
        """Agents, engines (all at once: each takes ~20 s), controller and router."""
        gbps = self.config.snic_read_bytes_per_s * 8 / 1e9
        ids = self.identities = LocalIdentities.create(self.config.workdir / "pki")
        for node, role in self.config.nodes():
            self.agents[node] = start_agent(
                node,
                role,
                self.store,
                self.config.workdir / "agents",
                ["--snic-read-gbps", f"{gbps:.6f}"],
                buffer_bytes="96MiB",
                device_bytes="16MiB",
                tls_dir=ids.directory("agent", f"agent-{node}"),
            )
        specs = [
            EngineSpec(
                self.config.model_dir,
                free_port(),
                engine_id=node,
                kv_cache_gib=self.config.kv_cache_gib,
                kv_transfer_config=kv_transfer_config(
                    self.agents[node].endpoint,
                    node,
                    tls_dir=str(ids.directory("engine", f"engine-{node}")),
                ),
                extra_args=ENGINE_ARGS,
            )
            for node, _ in self.config.nodes()
        ]
        if self.config.reference:
            specs.append(
                EngineSpec(
                    self.config.model_dir,
                    free_port(),
                    engine_id="reference",
                    kv_cache_gib=self.config.kv_cache_gib,
                    extra_args=ENGINE_ARGS,
                )
            )
        (self.config.workdir / "engines").mkdir(parents=True, exist_ok=True)
        started = start_engines(specs, log_dir=self.config.workdir / "engines")
        for spec, engine in zip(specs, started, strict=True):
            if spec.engine_id == "reference":
                self.reference = engine
            else:
                self.engines[spec.engine_id] = engine
        self.restart_control_plane(policy)

    def restart_control_plane(self, policy: str) -> str:
        """(Re)start the controller with a policy and the router in front of it."""
        self.stop_control_plane()
        params: dict[str, object] = {}
        if policy in ("paper", "prefill-only", "dualpath-split"):
            params["alpha"] = alpha_for(self.config.snic_read_bytes_per_s, KV_BYTES_PER_TOKEN)
        self.controller = ControllerProcess(
            policy=policy,
            params=params,
            report_interval_ms=100,
            liveness_timeout_s=10.0,
            log_path=self.config.workdir / f"controller-{policy}.log",
            tls_dir=self._tls_dir("controller", "controller"),
        ).start(timeout_s=60.0)
        self.router = RouterProcess(
            controller=self.controller.target,
            engines=[self._engine_spec(node, role) for node, role in self.config.nodes()],
            hash_namespace=self.namespace,
            block_tokens=BLOCK_TOKENS,
            extra_args=["--kv-bytes-per-token", str(KV_BYTES_PER_TOKEN)],
            log_path=self.config.workdir / f"router-{policy}.log",
            tls_dir=self._tls_dir("router", "router"),
        ).start(timeout_s=60.0)
        self.write_state()
        return self.router.url

    def _tls_dir(self, role: str, name: str) -> Path | None:
        return None if self.identities is None else self.identities.directory(role, name)

    def _engine_spec(self, node: str, role: str) -> str:
        engine = self.engines[node]
        return (
            f"id={node},role={role},url={engine.base_url},node={node},"
            f"agent={self.agents[node].endpoint}"
        )

    def stop_control_plane(self) -> None:
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def pids(self) -> dict[str, int]:
        out = {f"agent {n}": a.pid for n, a in self.agents.items()}
        out.update({f"engine {n}": e.pid for n, e in self.engines.items()})
        if self.reference is not None:
            out["engine reference"] = self.reference.pid
        if self.controller is not None and self.controller.proc is not None:
            out["controller"] = self.controller.proc.pid
        if self.router is not None and self.router.proc is not None:
            out["router"] = self.router.proc.pid
        return out

    def write_state(self) -> None:
        state = {
            "router": self.router.url if self.router else None,
            "controller": self.controller.target if self.controller else None,
            "agents": {n: a.endpoint for n, a in self.agents.items()},
            "engines": {n: e.base_url for n, e in self.engines.items()},
            "reference": self.reference.base_url if self.reference else None,
            # Every gRPC port requires a client certificate of this CA (mutual TLS).
            "pki": str(self.identities.root) if self.identities else None,
            "pids": self.pids(),
        }
        (self.config.workdir / "stack.json").write_text(json.dumps(state, indent=2))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_control_plane()
        stop_engines([*self.engines.values(), *([self.reference] if self.reference else [])])
        for agent in self.agents.values():
            agent.stop()
