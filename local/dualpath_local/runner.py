"""The demo end to end: start the stack, pre-populate the stores, play the workload under
each policy, report, and shut everything down (Ctrl-C and SIGTERM included).

`run_demo(config, console)` is the whole job; `dualpath demo` is a thin CLI over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dualpath_agent.client import AgentClient, ReadPath
from dualpath_agent.layout import BlockLayout
from dualpath_controller.client import ControllerSession
from dualpath_controller.policy.paper import alpha_for
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dualpath_local.chaos import ChaosRun, recovery
from dualpath_local.chart import write_chart
from dualpath_local.config import DemoConfig, buffer_sizes, check_memory
from dualpath_local.display import (
    NodeLive,
    fault_lines,
    live_view,
    results_table,
    verification_lines,
)
from dualpath_local.driver import Cluster, PhaseDriver
from dualpath_local.engines import EngineBook, EngineReporters, Gpu, NodeMonitor
from dualpath_local.identities import LocalIdentities
from dualpath_local.interrupts import interrupts_deferred, log_to_file, stop_signals_as_interrupt
from dualpath_local.results import (
    NodeCounters,
    PhaseResult,
    add_speedups,
    node_results,
    phase_json,
    rate_timeline,
    summarize_phase,
)
from dualpath_local.stack import LocalStack, NodeSpec, StoreLinks, node_specs, pid_alive
from dualpath_local.supervisor import Supervisor
from dualpath_local.workload import Workload, build_workload, stored_prefix_blocks

log = logging.getLogger("dualpath.local")


@dataclass
class DemoResult:
    config: DemoConfig
    workload: dict[str, float]
    phases: list[PhaseResult]
    transports: dict[str, dict[str, str]]
    setup_s: float
    total_s: float
    leaks: list[str]
    chart: str | None = None
    processes: list[dict[str, object]] = field(default_factory=list)
    processes_left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            bool(self.phases)
            and all(p.ok for p in self.phases)
            and not self.leaks
            and not self.processes_left
        )

    def speedup(self, policy: str) -> float | None:
        return next((p.speedup for p in self.phases if p.policy == policy), None)

    def as_json(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["workdir"] = str(self.config.workdir) if self.config.workdir else None
        cfg["json_path"] = str(self.config.json_path) if self.config.json_path else None
        cfg["chart_path"] = str(self.config.chart_path) if self.config.chart_path else None
        return {
            "ok": self.ok,
            "config": cfg,
            "workload": self.workload,
            "phases": [phase_json(p) for p in self.phases],
            "speedup_over_prefill_only": {p.policy: p.speedup for p in self.phases},
            "checksum_failures": sum(p.checksum_failures for p in self.phases),
            "transports": self.transports,
            "setup_s": self.setup_s,
            "total_s": self.total_s,
            "leaks": self.leaks,
            "chart": self.chart,
            "processes": self.processes,
            "processes_left": self.processes_left,
        }


class Demo:
    def __init__(self, config: DemoConfig, console: Console) -> None:
        config.validate()
        self.config = config
        self.console = console
        self.workload = build_workload(config.workload)
        cfg = config.workload
        self.layout = BlockLayout(
            cfg.preset.layers, cfg.block_tokens, cfg.preset.bytes_per_token_layer
        )
        host, device = buffer_sizes(self.workload)
        check_memory((host + device) * (config.prefill_nodes + config.decode_nodes))
        self.nodes: list[NodeSpec] = node_specs(
            config.prefill_nodes, config.decode_nodes, config.snic_read_bytes_per_s, host, device
        )
        self.hbm_tokens = {n.engine_id: device // cfg.preset.kv_bytes_per_token for n in self.nodes}
        self.stack: LocalStack | None = None
        self.clients: dict[str, AgentClient] = {}
        self.monitor: NodeMonitor | None = None
        self.reporters: EngineReporters | None = None
        self.book = EngineBook(self.hbm_tokens)
        self.gpus = {n.engine_id: Gpu() for n in self.nodes}
        self.links: StoreLinks | None = None
        self.supervisor: Supervisor | None = None
        self._own_workdir = False

    # ----- setup ------------------------------------------------------------------------------
    def _workdir(self) -> Path:
        if self.config.workdir is not None:
            self.config.workdir.mkdir(parents=True, exist_ok=True)
            return self.config.workdir
        self._own_workdir = True
        return Path(tempfile.mkdtemp(prefix="dualpath-demo-"))

    def start(self) -> None:
        workdir = self._workdir()
        log_to_file(workdir / "demo.log")
        log.info("demo starting", extra={"workdir": str(workdir), "pid": os.getpid()})
        # Mutual TLS as in a cluster, with a throwaway CA in the workdir.
        self.stack = LocalStack(
            workdir, self.nodes, identities=LocalIdentities.create(workdir / "pki")
        )
        with self.console.status(
            f"starting {len(self.nodes)} agents ({self.config.prefill_nodes} prefill, "
            f"{self.config.decode_nodes} decode) under {workdir} ..."
        ):
            self.stack.start_agents(self.config.transport)
        self.supervisor = Supervisor(self.stack).start()
        identity = self.stack.client_identity()
        self.clients = {
            n.name: AgentClient(self.stack.endpoint(n.name), 60.0, identity=identity)
            for n in self.nodes
        }
        self.monitor = NodeMonitor(self.clients).start()
        self.links = self.stack.store_links()
        self._seed()
        self._warm_up()

    def _seed(self) -> None:
        """Pre-populate the stores with every trajectory's stored prefix (what its earlier
        turns left in the shared store): written once through the first node's agent
        (several streams, so disk syncs overlap), then linked into every other store."""
        assert self.stack is not None
        seed = self.config.workload.seed
        prefixes = [
            stored_prefix_blocks(p, seed, self.layout.block_tokens)
            for p in self.workload.trajectories
        ]
        first = self.nodes[0].name
        links = self.links
        assert links is not None
        pending = list(prefixes)
        lock = threading.Lock()
        errors: list[BaseException] = []
        with Progress(
            TextColumn("pre-populating the stores"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("blocks"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            task = progress.add_task("seed", total=sum(len(b) for b in prefixes))

            def worker() -> None:
                while not errors:
                    with lock:
                        if not pending:
                            return
                        blocks = pending.pop()
                    try:
                        self.clients[first].seed_synthetic(blocks, self.layout)
                        links.replicate([b.block_hash for b in blocks], first)
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    progress.advance(task, len(blocks))

            threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        if errors:
            raise errors[0]

    def _warm_up(self) -> None:
        """One small load + commit over every (prefill, decode) pair, so transport
        connections are up before anything is timed (UCX connects on first use)."""
        first = stored_prefix_blocks(
            self.workload.trajectories[0], self.config.workload.seed, self.layout.block_tokens
        )[:4]
        pes = [n for n in self.nodes if n.role == "prefill"]
        des = [n for n in self.nodes if n.role == "decode"]
        for pe in pes:
            for de in des:
                rid = f"warmup-{pe.name}-{de.name}"
                de_ep = self.clients[de.name].endpoint
                self.clients[pe.name].load(
                    rid,
                    first,
                    self.layout,
                    ReadPath.SPLIT if len(first) > 1 else ReadPath.DE_READ,
                    decode_endpoint=de_ep,
                    de_read_fraction=0.5,
                    missed_tokens=self.layout.block_tokens,
                    release_after_load=False,
                    keep_for_merge=True,
                )
                self.clients[pe.name].commit(
                    rid, self.layout.block_tokens, [], persist=False, decode_endpoint=de_ep
                )
                self.clients[de.name].release(rid)

    # ----- phases -----------------------------------------------------------------------------
    def policy_params(self, policy: str) -> dict[str, object]:
        kv = self.config.workload.preset.kv_bytes_per_token
        if policy in ("paper", "prefill-only", "dualpath-split"):
            # alpha as the paper defines it: tokens one node's SNIC reads in 3 s.
            return {"alpha": alpha_for(self.config.snic_read_bytes_per_s, kv)}
        return {}

    def counters(self) -> dict[str, NodeCounters]:
        assert self.monitor is not None
        return self.monitor.counters()

    def start_controller(self, policy: str, tag: str) -> str:
        assert self.stack is not None and self.monitor is not None
        if self.reporters is not None:
            self.reporters.stop()
        target = self.stack.start_controller(policy, self.policy_params(policy), tag)
        self.reporters = EngineReporters(
            target=target,
            nodes=self.nodes,
            monitor=self.monitor,
            book=self.book,
            hbm_tokens=self.hbm_tokens,
            endpoints={n: c.endpoint for n, c in self.clients.items()},
            tokens_per_queued_byte=self.layout.block_tokens
            / self.layout.file_bytes(self.layout.block_tokens),
            identity=self.stack.client_identity(),
        )
        self.reporters.start()
        return target

    def run_phase(self, index: int, policy: str) -> PhaseResult:
        assert self.monitor is not None and self.links is not None and self.stack is not None
        tag = f"p{index}-{policy}"
        target = self.start_controller(policy, tag)
        # The engines' frontend schedules over a Session stream (pipelined, batched), the
        # API a production frontend uses; its calls mirror ControllerClient's.
        controller = ControllerSession(
            target, timeout_s=30.0, identity=self.stack.client_identity()
        )
        cluster = Cluster(
            controller=controller,
            agents=self.clients,
            endpoints={n: c.endpoint for n, c in self.clients.items()},
            engine_node={n.engine_id: n.name for n in self.nodes},
            book=self.book,
            gpus=self.gpus,
            links=self.links,
            report_agent_failure=self._report_agent_failure,
        )
        driver = PhaseDriver(
            self.workload,
            cluster,
            self.config.compute,
            tag,
            policy,
            self.config.spot_check_every,
        )
        before = self.counters()
        restarts_before = len(self.supervisor.restarts) if self.supervisor else 0
        chaos: ChaosRun | None = None
        cpu_before = self._cpu_seconds()
        log.info("phase started", extra={"policy": policy, "controller": target})
        total = self.workload.turns_total
        caps = {n.name: n.snic_read_bytes_per_s for n in self.nodes}
        try:
            with Live(console=self.console, refresh_per_second=4, transient=False) as live:

                def tick() -> None:
                    run = driver.run
                    live.update(
                        live_view(
                            policy,
                            run.turns_done,
                            total,
                            time.monotonic() - run.started,
                            self._live_nodes(caps),
                            run.paths(),
                            len(run.errors),
                        )
                    )

                threads = driver.start()
                if self.config.chaos:
                    chaos = ChaosRun(self.config.chaos, self.stack).start(driver.run.started)
                run = driver.wait(threads, tick)
            if not self.console.is_terminal:
                self.console.print()  # a terminal ends the live view's line itself
        finally:
            applied = chaos.stop() if chaos is not None else []
            controller.close()
        after = self.counters()
        cpu_s = self._cpu_seconds() - cpu_before
        roles = {n.name: n.role for n in self.nodes}
        nodes = node_results(before, after, roles, caps, run.finished - run.started)
        samples = [
            (s.t, sum(s.bytes_read.values()))
            for s in self.monitor.samples_between(run.started - 0.2, run.finished + 0.2)
        ]
        result = summarize_phase(run, total, nodes, rate_timeline(samples, run.started))
        result.stack_cpu_cores = cpu_s / result.wall_s
        result.loadavg_1m = os.getloadavg()[0]
        result.restarts = (
            len(self.supervisor.restarts) if self.supervisor else 0
        ) - restarts_before
        completions = [r.started_s + r.turn_s for r in run.records]
        hits = [a for a in applied if a.applied_s is not None]
        # Each event's dip is measured until the next event hits.
        ends = [a.applied_s for a in hits[1:]] + [None] if hits else []
        result.chaos = [
            {
                **a.as_json(),
                **recovery(completions, a.applied_s, result.wall_s, until).as_json(),
            }
            for a, until in zip(hits, ends, strict=True)
            if a.applied_s is not None
        ]
        log.info(
            "phase finished",
            extra={
                "policy": policy,
                "turns": result.turns,
                "turns_per_s": round(result.turns_per_s, 3),
                "errors": len(result.errors),
            },
        )
        return result

    def _report_agent_failure(self, agent_endpoint: str, reason: str) -> object:
        if self.reporters is None or self.reporters.client is None:
            return None
        return self.reporters.client.report_agent_failure(agent_endpoint, reason)

    def _live_nodes(self, caps: dict[str, float]) -> list[NodeLive]:
        assert self.monitor is not None
        out = []
        for node in self.clients:
            stat = self.monitor.latest(node)
            out.append(
                NodeLive(
                    node,
                    self.monitor.rate(node),
                    caps[node],
                    stat.read_queue_length if stat is not None else 0,
                )
            )
        return out

    def _cpu_seconds(self) -> float:
        """CPU used by the stack: its processes and this one (the engine stand-ins)."""
        assert self.stack is not None
        me = os.times()
        return self.stack.cpu_seconds() + me.user + me.system

    def leaks(self) -> list[str]:
        """Buffers still held, reads still queued: every turn must have cleaned up."""
        found = []
        for node, client in self.clients.items():
            s = client.stat()
            if s.held_requests or s.read_queue_length:
                found.append(
                    f"{node}: {s.held_requests} requests hold buffers, "
                    f"{s.read_queue_length} reads queued"
                )
        return found

    def transports(self) -> dict[str, dict[str, str]]:
        out = {}
        for node, client in self.clients.items():
            s = client.stat()
            out[node] = {
                "peer": s.peer_transport,
                "storage": s.storage_transport,
                "fallback_reason": s.fallback_reason,
                "direct_io": str(s.direct_io),
                "device_tier": s.device_tier,
            }
        return out

    # ----- teardown ---------------------------------------------------------------------------
    def endpoints_text(self) -> str:
        assert self.stack is not None
        lines = []
        c = self.stack.controller
        if c is not None:
            lines.append(
                f"controller  gRPC {c.target}   metrics http://127.0.0.1:{c.metrics_port}/metrics"
                f"   pid {c.proc.pid if c.proc else '?'}"
            )
        for node, handle in self.stack.agents.items():
            lines.append(
                f"{node:<11} gRPC {handle.endpoint}   metrics http://{handle.metrics_address}"
                f"/metrics   store {self.stack.store_dir(node)}   pid {handle.pid}"
            )
        ids = self.stack.identities
        if ids is not None:
            driver = ids.directory("engine", "driver")
            lines.append(
                f"mTLS        CA {ids.root / 'ca.crt'}   engine-role identity {driver}"
                "   (every gRPC port requires a client certificate of this CA)"
            )
        lines.append(f"logs        {self.stack.workdir}")
        return "\n".join(lines)

    def started(self) -> list[tuple[str, int]]:
        return list(self.stack.started) if self.stack is not None else []

    def close(self, keep_files: bool = False) -> None:
        """Stop everything; the temporary workdir is removed unless `keep_files` (a failed
        run keeps its logs)."""
        if self.supervisor is not None:
            self.supervisor.stop()  # what close() stops must stay stopped
        if self.reporters is not None:
            with contextlib.suppress(Exception):
                self.reporters.stop()
        if self.monitor is not None:
            self.monitor.stop()
        for client in self.clients.values():
            client.close()
        if self.stack is not None:
            self.stack.close()
            if self._own_workdir and not keep_files:
                shutil.rmtree(self.stack.workdir, ignore_errors=True)

    @property
    def workdir(self) -> Path | None:
        return self.stack.workdir if self.stack is not None else None


class DemoFailed(RuntimeError):
    """The demo could not run; the logs were kept in `workdir`."""

    def __init__(self, message: str, workdir: Path | None) -> None:
        super().__init__(message)
        self.workdir = workdir


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


def title_of(config: DemoConfig, workload: Workload) -> str:
    w = config.workload
    s = workload.summary()
    return (
        f"DualPath local demo: {config.prefill_nodes}P{config.decode_nodes}D, {w.model}, "
        f"trace {w.trace} x{w.context_scale:g} ({int(s['trajectories'])} agents, "
        f"{int(s['turns'])} turns, mean prompt {s['mean_prompt_tokens']:,.0f} tokens, "
        f"{s['reuse_ratio']:.1%} reused), SNIC cap {config.snic_read_bytes_per_s / 1e6:.0f} MB/s "
        f"per node"
    )


def run_demo(config: DemoConfig, console: Console) -> DemoResult:
    started = time.monotonic()
    demo = Demo(config, console)
    title = title_of(config, demo.workload)
    kv_turn = demo.workload.mean_prompt_tokens() * config.workload.preset.kv_bytes_per_token
    console.print(f"[bold]{title}[/bold]")
    if config.policies:
        console.print(
            f"each turn re-reads ~{kv_turn / 1e6:.1f} MB of KV cache; "
            f"{len(config.policies)} policies run the same workload back to back"
        )
    failed = True
    with stop_signals_as_interrupt():
        try:
            result = _run(demo, started)
            _report(result, console, title)
            failed = not result.ok and bool(config.policies)
            if config.keep:
                console.print("\n[bold]stack kept up[/bold] (Ctrl-C to stop it):")
                console.print(demo.endpoints_text())
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1.0)
        except KeyboardInterrupt:
            failed = False
            raise
        except Exception as exc:
            raise DemoFailed(_describe(exc), demo.workdir) from exc
        finally:
            with interrupts_deferred(), console.status("stopping the stack ..."):
                demo.close(keep_files=failed)
            if failed and demo.workdir is not None:
                console.print(f"logs kept in {demo.workdir}")
    # After shutdown: every process this run started must be gone.
    result.processes = [{"name": n, "pid": p} for n, p in demo.started()]
    result.processes_left = [f"{n} (pid {p})" for n, p in demo.started() if pid_alive(p)]
    for left in result.processes_left:
        console.print(f"[red]process left behind: {left}[/red]")
    _write_json(result)
    console.print(
        f"stopped {len(result.processes)} processes, {len(result.processes_left)} left; "
        f"setup {result.setup_s:.1f} s, total {time.monotonic() - started:.1f} s"
    )
    return result


def _run(demo: Demo, started: float) -> DemoResult:
    demo.start()
    setup_s = time.monotonic() - started
    transports = demo.transports()
    for node, t in transports.items():
        note = f" (fallback: {t['fallback_reason']})" if t["fallback_reason"] else ""
        demo.console.print(
            f"  {node}: peer transport {t['peer']}, storage {t['storage']}"
            f" (O_DIRECT {t['direct_io']}), device tier {t['device_tier']}{note}"
        )
    phases: list[PhaseResult] = []
    for i, policy in enumerate(demo.config.policies):
        phases.append(demo.run_phase(i, policy))
        if phases[-1].errors:
            break
    if not demo.config.policies:
        # Only the stack (`dualpath local up`): a controller whose engines are registered.
        demo.start_controller(demo.config.up_policy, "up")
    add_speedups(phases)
    return DemoResult(
        config=demo.config,
        workload=demo.workload.summary(),
        phases=phases,
        transports=transports,
        setup_s=setup_s,
        total_s=time.monotonic() - started,
        leaks=demo.leaks(),
    )


def _write_json(result: DemoResult) -> None:
    path = result.config.json_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.as_json(), indent=2) + "\n")


def _report(result: DemoResult, console: Console, title: str) -> None:
    config = result.config
    if result.phases:
        console.print(results_table(result.phases, "Results", console.width))
        for line in verification_lines(result.phases) + fault_lines(result.phases):
            console.print("  " + line)
    for leak in result.leaks:
        console.print(f"[red]leak: {leak}[/red]")
    for p in result.phases:
        if p.speedup is not None and p.policy != "prefill-only":
            console.print(f"  {p.policy}: {p.speedup:.2f}x the turns/s of prefill-only")
    if config.chart_path is not None and result.phases:
        result.chart = str(write_chart(result.phases, config.chart_path, title))
        console.print(f"chart: {result.chart}")
    _write_json(result)
    if config.json_path is not None:
        console.print(f"results: {config.json_path}")
