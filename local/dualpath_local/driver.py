"""Engine stand-ins playing the workload against the real controller and agents.

One thread per agent trajectory plays its turns in order (turn k+1 needs turn k's output),
all trajectories at once (offline, as the paper's job-completion-time runs). A turn:

1. Lookup the prompt's blocks on every node's store: the cached prefix is what every
   node can read (all stores hold the same blocks, like one shared 3FS seen from all nodes).
2. Schedule it: the controller picks the prefill and decode engines and the read path.
3. Load the cached KV into the prefill agent by that path (real bytes through NIXL or the
   fallback, verified by CRC32), layer by layer; each layer's modelled prefill compute
   runs on the prefill engine's GPU as soon as the layer is ready (layer-wise prefill).
4. Commit: the missed tokens' KV goes to the decode agent, which merges it with the
   prefix and persists the prompt's new full blocks; they are then written to the other
   nodes' stores too (the shared store makes them visible everywhere).
5. Decode for the modelled time; the blocks its output completes are persisted.
6. Release the decode agent's buffers and Complete the request at the controller.

Failures cost throughput, never turns. A decode agent that fails under a Load is replaced by
the prefill agent's own storage read (the agent falls back by itself); the driver tells the
controller, which stops assigning that node. Any other transient failure (an agent or the
controller down or restarting) abandons the attempt, reports the agents that no longer
answer, and plays the turn again under a new request id, up to MAX_ATTEMPTS.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from dualpath.v1 import agent_pb2
from dualpath_agent.blockhash import ChainedBlock
from dualpath_agent.client import AgentClient, ReadPath, expected_region
from dualpath_agent.layout import BlockLayout
from dualpath_controller.client import ControllerClient, ControllerSession

from dualpath_local.engines import EngineBook, Gpu
from dualpath_local.stack import StoreLinks
from dualpath_local.workload import (
    Context,
    TrajectoryPlan,
    Turn,
    TurnBlocks,
    Workload,
    decode_blocks,
    plan_turn_blocks,
)

log = logging.getLogger("dualpath.local")

# Failures worth another attempt: an agent or the controller down, restarting, or
# restarted and missing what the attempt had booked. Anything else is a bug to surface.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
    }
)
MAX_ATTEMPTS = 8
# A health probe of an agent after a failed attempt: enough for a live one on loopback.
PROBE_TIMEOUT_S = 1.0

PATH_NAMES = {
    ReadPath.PE_READ: "pe_read",
    ReadPath.DE_READ: "de_read",
    ReadPath.SPLIT: "split",
}


@dataclass(frozen=True)
class ComputeModel:
    """Modelled GPU time: prefill of the missed tokens on the PE (layer by layer, one GPU
    per engine) and decode of the output tokens on the DE (batched: not serialised)."""

    prefill_tokens_per_s: float = 20_000.0
    tpot_s: float = 0.010

    def prefill_layer_s(self, missed_tokens: int, layers: int) -> float:
        return missed_tokens / self.prefill_tokens_per_s / layers

    def decode_s(self, output_tokens: int) -> float:
        return output_tokens * self.tpot_s


@dataclass
class TurnRecord:
    trajectory: int
    turn: int
    request_id: str
    path: str
    de_read_fraction: float
    prefill_node: str
    decode_node: str
    prompt_tokens: int
    cached_tokens: int
    missed_tokens: int
    blocks_expected: int
    bytes_loaded: int = 0
    bytes_from_local_storage: int = 0
    bytes_from_peer: int = 0
    blocks_verified: int = 0
    blocks_persisted: int = 0
    started_s: float = 0.0
    load_s: float = 0.0
    turn_s: float = 0.0
    spot_checked: bool = False
    spot_check_ok: bool = True
    # Attempts this turn took (1 = no retry), and decode-side blocks the prefill agent read
    # itself because the decode agent failed.
    attempts: int = 1
    fallback_blocks: int = 0


@dataclass
class PhaseRun:
    """What a phase's workers produce (aggregated by results.py)."""

    policy: str
    records: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    placement_mismatches: int = 0
    # Attempts abandoned and played again; loads that fell back to the prefill agent's own
    # storage; agent failures reported to the controller.
    retries: int = 0
    fallbacks: int = 0
    failures_reported: int = 0
    spot_checks: int = 0
    spot_check_failures: int = 0
    started: float = 0.0
    finished: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: TurnRecord) -> None:
        with self.lock:
            self.records.append(record)

    @property
    def turns_done(self) -> int:
        with self.lock:
            return len(self.records)

    def paths(self) -> dict[str, int]:
        with self.lock:
            counts: dict[str, int] = {}
            for r in self.records:
                counts[r.path] = counts.get(r.path, 0) + 1
            return counts


@dataclass
class Cluster:
    """Clients of one phase: the controller and every node's agent."""

    controller: ControllerClient | ControllerSession
    agents: dict[str, AgentClient]
    endpoints: dict[str, str]
    engine_node: dict[str, str]
    book: EngineBook
    gpus: dict[str, Gpu]
    links: StoreLinks
    # Tells the controller an agent failed (its endpoint, why); None: nobody to tell.
    report_agent_failure: Callable[[str, str], object] | None = None


class PhaseDriver:
    def __init__(
        self,
        workload: Workload,
        cluster: Cluster,
        compute: ComputeModel,
        phase_tag: str,
        policy: str,
        spot_check_every: int = 0,
    ) -> None:
        self.workload = workload
        self.cluster = cluster
        self.compute = compute
        self.phase_tag = phase_tag
        cfg = workload.config
        self.layout = BlockLayout(
            cfg.preset.layers, cfg.block_tokens, cfg.preset.bytes_per_token_layer
        )
        self.kv_bytes_per_token = cfg.preset.kv_bytes_per_token
        self.spot_check_every = spot_check_every
        self.run = PhaseRun(policy)
        self.stop = threading.Event()
        self._turn_counter = itertools.count(1)

    # ----- the phase -----------------------------------------------------------------------
    def start(self) -> list[threading.Thread]:
        self.run.started = time.monotonic()
        threads = [
            threading.Thread(
                target=self._play_trajectory, args=(plan,), daemon=True, name=f"agent-{plan.index}"
            )
            for plan in self.workload.trajectories
        ]
        for t in threads:
            t.start()
        return threads

    def wait(self, threads: list[threading.Thread], on_tick: Callable[[], None]) -> PhaseRun:
        """Join the workers while refreshing the display; Ctrl-C stops them."""
        try:
            while any(t.is_alive() for t in threads):
                on_tick()
                for t in threads:
                    t.join(timeout=0.1)
                    if t.is_alive():
                        break
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.run.finished = time.monotonic()
        on_tick()
        return self.run

    def _play_trajectory(self, plan: TrajectoryPlan) -> None:
        context = Context.initial(plan, self.workload.config.seed, self.phase_tag)
        for turn in plan.turns:
            for attempt in itertools.count(1):
                if self.stop.is_set():
                    return
                try:
                    self._play_turn(plan, context, turn, attempt)
                    break
                except Exception as exc:
                    if attempt < MAX_ATTEMPTS and _retryable(exc):
                        self._before_retry(plan, turn, attempt, exc)
                        continue
                    message = f"{plan.session_id} turn {turn.index}: {_describe(exc)}"
                    log.error("turn failed", extra={"error": message, "attempts": attempt})
                    with self.run.lock:
                        self.run.errors.append(message)
                    self.stop.set()  # a failed phase is not measured: stop it
                    return

    def _before_retry(
        self, plan: TrajectoryPlan, turn: Turn, attempt: int, exc: BaseException
    ) -> None:
        """Report the agents that no longer answer, then back off before the next attempt."""
        with self.run.lock:
            self.run.retries += 1
        dead = [node for node, agent in self.cluster.agents.items() if not _answers(agent)]
        for node in dead:
            self._report_failure(node, f"no answer after a failed turn: {_describe(exc)}")
        log.warning(
            "turn attempt failed: playing it again",
            extra={
                "session": plan.session_id,
                "turn": turn.index,
                "attempt": attempt,
                "error": _describe(exc),
                "agents_not_answering": dead,
            },
        )
        self.stop.wait(min(2.0, 0.1 * 2**attempt))

    def _report_failure(self, node: str, reason: str) -> None:
        report = self.cluster.report_agent_failure
        if report is None:
            return
        try:
            report(self.cluster.endpoints[node], reason)
        except grpc.RpcError as exc:  # the controller may be down too: liveness covers it
            log.info("agent failure not reported", extra={"node": node, "error": _describe(exc)})
            return
        with self.run.lock:
            self.run.failures_reported += 1

    # ----- one turn ------------------------------------------------------------------------
    def _lookup(self, chain: list[ChainedBlock]) -> int:
        """Leading blocks every node's store holds (what any read path can read)."""
        if not chain:
            return 0
        counts = []
        for client in self.cluster.agents.values():
            try:
                counts.append(client.lookup(chain)[0])
            except grpc.RpcError:
                continue  # a node down: what the others hold is what can be read
        if not counts:
            raise NoAgentAnswered("no agent answered the prefix lookup")
        if len(set(counts)) > 1:
            with self.run.lock:
                self.run.placement_mismatches += 1
        return min(counts)

    def _play_turn(
        self, plan: TrajectoryPlan, context: Context, turn: Turn, attempt: int = 1
    ) -> None:
        c = self.cluster
        started = time.monotonic()
        prompt = context.prompt(turn)
        stored = self._lookup(plan_turn_blocks(prompt, self.layout.block_tokens, 0).chain)
        blocks = plan_turn_blocks(prompt, self.layout.block_tokens, stored)
        request_id = f"{self.phase_tag}-{plan.session_id}-t{turn.index}"
        if attempt > 1:  # a new request: the first attempt's bookings may linger
            request_id += f"-a{attempt}"
        a = c.controller.schedule(
            request_id,
            total_tokens=turn.prompt_tokens,
            cached_tokens=blocks.cached_tokens,
            append_tokens=blocks.missed_tokens,
            expected_output_tokens=turn.output_tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
            session_id=plan.session_id,
            wait_for_capacity_s=120.0,
        ).assignment
        step = _TurnStep(request_id, a.prefill_engine_id, a.decode_engine_id, c.engine_node)
        context_tokens = turn.prompt_tokens + turn.output_tokens
        c.book.add(step.pe, turn.prompt_tokens)
        c.book.add(step.de, context_tokens, hbm_tokens=context_tokens)
        record = TurnRecord(
            trajectory=plan.index,
            turn=turn.index,
            request_id=request_id,
            path=PATH_NAMES[ReadPath(a.read_path)],
            de_read_fraction=a.de_read_fraction,
            prefill_node=step.pe_node,
            decode_node=step.de_node,
            prompt_tokens=turn.prompt_tokens,
            cached_tokens=blocks.cached_tokens,
            missed_tokens=blocks.missed_tokens,
            blocks_expected=len(blocks.cached),
            attempts=attempt,
        )
        try:
            self._prefill(step, record, blocks, ReadPath(a.read_path), a.de_read_fraction)
            c.book.remove(step.pe, turn.prompt_tokens)
            step.pe_done = True
            # Decode: the DE generates the output; full blocks are persisted as they fill.
            self.stop.wait(self.compute.decode_s(turn.output_tokens))
            full_context = context.finish(prompt, turn)
            self._persist(
                decode_blocks(full_context, turn.prompt_tokens, self.layout.block_tokens),
                step.de_node,
            )
            c.agents[step.de_node].release(request_id)
            # A controller restarted meanwhile no longer knows the request: nothing to free.
            c.controller.complete(request_id, missing_ok=True)
            c.book.remove(step.de, context_tokens, hbm_tokens=context_tokens)
            step.de_done = True
        finally:
            if not step.pe_done:
                c.book.remove(step.pe, turn.prompt_tokens)
            if not step.de_done:
                c.book.remove(step.de, context_tokens, hbm_tokens=context_tokens)
                self._abandon(step)
        record.started_s = started - self.run.started
        record.turn_s = time.monotonic() - started
        self.run.add(record)

    def _prefill(
        self,
        step: _TurnStep,
        record: TurnRecord,
        blocks: TurnBlocks,
        path: ReadPath,
        de_read_fraction: float,
    ) -> None:
        """Load the cached prefix by the assigned path while the prefill computes layer by
        layer, then Commit (missed tokens' KV -> decode agent, new blocks persisted)."""
        c = self.cluster
        gpu = c.gpus[step.pe]
        layer_s = self.compute.prefill_layer_s(blocks.missed_tokens, self.layout.layers)
        if not blocks.cached:
            # Nothing cached (a prompt shorter than one block): compute it all, persist.
            for _ in range(self.layout.layers):
                gpu.compute(layer_s, self.stop)
            record.path = "none"
            self._persist(blocks.new_blocks, step.de_node)
            return
        load_started = time.monotonic()
        loaded = c.agents[step.pe_node].load(
            step.request_id,
            blocks.cached,
            self.layout,
            path,
            decode_endpoint=c.endpoints[step.de_node],
            de_read_fraction=de_read_fraction,
            missed_tokens=blocks.missed_tokens,
            release_after_load=False,
            keep_for_merge=path != ReadPath.PE_READ,
            on_layer=lambda _progress: gpu.compute(layer_s, self.stop),
        )
        record.load_s = time.monotonic() - load_started
        c.controller.read_done(step.request_id)  # the controller's booked read ends here
        record.bytes_loaded = loaded.bytes_total
        record.bytes_from_local_storage = loaded.bytes_from_local_storage
        record.bytes_from_peer = loaded.bytes_from_peer
        record.blocks_verified = loaded.blocks_verified
        if loaded.fallback_blocks:
            record.fallback_blocks = loaded.fallback_blocks
            with self.run.lock:
                self.run.fallbacks += 1
            self._report_failure(step.de_node, loaded.fallback_reason)
        self._maybe_spot_check(step, record, blocks.cached)
        commit = c.agents[step.pe_node].commit(
            step.request_id,
            missed_tokens=blocks.missed_tokens,
            new_blocks=blocks.new_blocks,
            decode_endpoint=c.endpoints[step.de_node],
        )
        if commit.persist_error:
            raise PersistFailed(f"persist failed on {step.de_node}: {commit.persist_error}")
        record.blocks_persisted = commit.blocks_persisted + commit.blocks_already_present
        c.controller.prefill_done(step.request_id)  # the PE's booked load ends here
        # The decode node persisted them; the shared store makes them visible everywhere.
        self._persist(blocks.new_blocks, step.de_node, already_on_first=True)

    def _persist(self, new: list[ChainedBlock], first: str, already_on_first: bool = False) -> None:
        """Persist blocks in `first`'s store (through its agent, unless Commit already did),
        then make them visible in every node's store (StoreLinks: the shared store).
        Bytes are kvgen's for each hash: the same the agents emulate computed KV with."""
        if not new:
            return
        if not already_on_first:
            self.cluster.agents[first].seed_synthetic(new, self.layout)
        self.cluster.links.replicate([b.block_hash for b in new], first)

    def _maybe_spot_check(
        self, step: _TurnStep, record: TurnRecord, cached: list[ChainedBlock]
    ) -> None:
        """Every Nth turn, read the loaded region back and compare it byte for byte with
        the bytes the blocks must hold (independent of the agents' own CRC checks)."""
        if not self.spot_check_every or next(self._turn_counter) % self.spot_check_every:
            return
        region = self.cluster.agents[step.pe_node].read_region(step.request_id, "load")
        layers = self.layout.layers
        stride = len(region) // layers
        prefix = sum(b.tokens for b in cached) * self.layout.bytes_per_token_layer
        got = b"".join(region[i * stride : i * stride + prefix] for i in range(layers))
        record.spot_checked = True
        record.spot_check_ok = got == expected_region(cached, self.layout)
        with self.run.lock:
            self.run.spot_checks += 1
            if not record.spot_check_ok:
                self.run.spot_check_failures += 1

    def _abandon(self, step: _TurnStep) -> None:
        c = self.cluster
        _quietly(lambda: c.controller.cancel(step.request_id, "turn failed", missing_ok=True))
        for node in {step.pe_node, step.de_node}:
            _quietly(lambda n=node: c.agents[n].release(step.request_id))  # type: ignore[misc]


@dataclass
class _TurnStep:
    request_id: str
    pe: str
    de: str
    engine_node: dict[str, str]
    pe_done: bool = False
    de_done: bool = False

    @property
    def pe_node(self) -> str:
        return self.engine_node[self.pe]

    @property
    def de_node(self) -> str:
        return self.engine_node[self.de]


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except (grpc.RpcError, ValueError) as exc:
        log.debug("cleanup call failed", extra={"error": str(exc)})


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in RETRYABLE
    return isinstance(exc, (NoAgentAnswered, PersistFailed))


def _answers(agent: AgentClient) -> bool:
    try:
        agent.stub.Health(agent_pb2.HealthRequest(), timeout=PROBE_TIMEOUT_S)
    except grpc.RpcError:
        return False
    return True


class NoAgentAnswered(RuntimeError):
    """No node's agent answered a prefix lookup (all down or restarting)."""


class PersistFailed(RuntimeError):
    """The decode agent could not persist the prompt's new blocks (Commit's persist step)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
