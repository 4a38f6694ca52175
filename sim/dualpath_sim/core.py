"""The discrete-event simulator: one run of one policy on one cluster and workload.

Life of one agent turn (one request):
  arrive -> global FIFO queue -> the policy core picks (PE, DE, read path) and the view books
  it -> storage read of the cached prefix (Full Blocks) through the chosen side's node SNIC
  into that node's DRAM buffer (split reads use both) -> queued at the PE once every byte is
  in a buffer -> layer-wise prefill in a FIFO batch of <= 300 ms compute, chunking the
  request that overflows; each layer's KV streams buffer -> PE HBM over the compute NICs
  (DE buffer -> PE over RDMA for the DE side) while the previous layer computes -> first
  token -> KV the DE lacks (the PE-side read plus the new tokens) goes PE -> DE buffer and the
  full context DE buffer -> DE HBM -> continuous-batching decode -> the turn's new Full
  Blocks are persisted through the DE node's SNIC -> the agent thinks, then sends its next
  turn.

Decode is simulated per batch change, not per step: between joins and leaves a decode
engine's step time is constant, so each engine keeps a step counter that advances at
1/step_time and one pending event for its next finishing request.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable

from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    Lifecycle,
    Policy,
    Request,
    Role,
)

from dualpath_sim import constants as C
from dualpath_sim.compute import decode_step_s, prefill_chunk_s, tokens_fitting
from dualpath_sim.config import SimConfig
from dualpath_sim.entities import AgentState, DecodeEngine, PrefillEngine, TurnState
from dualpath_sim.hardware import Link, Node, engine_name, node_name
from dualpath_sim.metrics import Invariants, RunResult
from dualpath_sim.policies import build_policy
from dualpath_sim.result import build_result
from dualpath_sim.trace import Trajectory, generate_trace

# Event kinds.
_ARRIVE, _KV_READY, _BATCH_DONE, _DECODE_JOIN, _DECODE_STEP = range(5)
# How many queued requests one scheduling pass hands the policy (the paper's batch form).
_SCHEDULE_WINDOW = 64
# Offline balance is measured until this fraction of all turns is done (see _result).
LOADED_FRACTION = 0.9
# Progress callback cadence, in events.
_PROGRESS_EVERY = 50_000

# Called now and then with the fraction of the run done (0..1).
ProgressFn = Callable[[float], None]


class Simulator:
    def __init__(
        self,
        config: SimConfig,
        trajectories: list[Trajectory] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.config = config
        self.profile = config.profile
        self.bpt = config.kv_bytes_per_token
        self.layers = config.layers
        self.progress = progress
        wl = config.workload
        self.trajectories = trajectories or generate_trace(wl.stats, wl.trajectories, wl.seed)
        self.policy: Policy
        self.policy, self.io_free = build_policy(config)
        self.rng = random.Random(wl.seed * 1_000_003 + 17)
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object, int]] = []
        self.seq = 0
        self.pending: deque[TurnState] = deque()
        self.inv = Invariants()
        self._build_cluster()
        self.decode_list = list(self.decodes.values())
        self.free_hbm_total = sum(de.capacity for de in self.decode_list)
        for i, de in enumerate(self.decode_list):
            de.index = i
        self.free_heap = [(-de.capacity, de.index) for de in self.decode_list]
        heapq.heapify(self.free_heap)
        beta = self.policy.params.get("beta")
        self.beta: float | None = float(beta) if beta is not None else None
        # Per-turn measurements.
        self.ttft: list[float] = []
        self.ttst: list[float] = []
        self.tpot: list[float] = []
        self.turns_done = 0
        self.turns_in_window = 0
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.computed_tokens = 0
        self.agents: list[AgentState] = []
        self.inflight: dict[str, TurnState] = {}
        # Time integrals over all decode engines: batch size and booked HBM tokens.
        self.area_batch = 0.0
        self.area_hbm = 0.0
        # Offline: the "loaded" part of the run ends when this many turns are done (the rest
        # is the drain, when too few agents are left to load the cluster).
        self.loaded_turns = -1
        self.total_turns = 0
        self.loaded_until = -1.0

    # ----- setup -----

    def _link(self, name: str, rate: float, bins: bool = False) -> Link:
        if self.io_free:
            return Link(name, math.inf)
        return Link(name, rate, self.config.bin_s if bins else 0.0)

    def _build_cluster(self) -> None:
        hw = self.config.hardware
        view = ClusterView()
        self.view = view
        # The booking lifecycle the gRPC server runs too (policy/lifecycle.py).
        self.lifecycle = Lifecycle(self.policy, view)
        self.nodes: list[Node] = []
        self.prefills: dict[str, PrefillEngine] = {}
        self.decodes: dict[str, DecodeEngine] = {}
        capacity = self.profile.de_kv_capacity_tokens
        for prefill, count in ((True, hw.prefill_nodes), (False, hw.decode_nodes)):
            for i in range(count):
                name = node_name(prefill, i)
                node = Node(
                    name,
                    prefill,
                    # Read series are kept even for the Oracle (all zeros) to keep shapes equal.
                    Link(name + "/snic-read", math.inf)
                    if self.io_free
                    else Link(name + "/snic-read", hw.snic_read_bytes_per_s, self.config.bin_s),
                    self._link(name + "/snic-write", hw.snic_write_bytes_per_s),
                    self._link(name + "/dram", hw.dram_bytes_per_s),
                )
                self.nodes.append(node)
                view.update_node_load(name, snic_read_bytes_per_s=hw.snic_read_bytes_per_s)
                for g in range(hw.gpus_per_node):
                    eid = engine_name(prefill, i, g)
                    node.engines.append(eid)
                    cnic = self._link(eid + "/cnic", hw.cnic_bytes_per_s)
                    if prefill:
                        self.prefills[eid] = PrefillEngine(eid, node, cnic)
                        view.add_engine(EngineState(eid, Role.PREFILL, node=name))
                    else:
                        self.decodes[eid] = DecodeEngine(eid, node, cnic, capacity)
                        view.add_engine(
                            EngineState(
                                eid,
                                Role.DECODE,
                                node=name,
                                hbm_capacity_tokens=capacity,
                                free_hbm_tokens=capacity,
                            )
                        )

    def _push(self, t: float, kind: int, obj: object, aux: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, aux))

    def _add_agents(self) -> None:
        wl = self.config.workload
        trajs = self.trajectories
        rng = self.rng
        if wl.mode == "offline":
            for aid in range(wl.agents):
                agent = self._make_agent(aid, trajs[aid % len(trajs)], wl.random_start)
                self._push(0.0, _ARRIVE, agent)
            return
        # Online: Poisson arrivals over the horizon, plus (warm start) the agents an endless
        # stream would already have in flight, caught at a uniformly random turn.
        aid = 0
        if wl.warm_start:
            in_flight = round(wl.arrival_rate * self._expected_agent_lifetime_s())
            spread = self._expected_turn_s()
            for _ in range(in_flight):
                agent = self._make_agent(aid, trajs[rng.randrange(len(trajs))], True)
                self._push(rng.uniform(0.0, spread), _ARRIVE, agent)
                aid += 1
        t = 0.0
        while True:
            t += rng.expovariate(wl.arrival_rate)
            if t >= wl.horizon_s:
                break
            agent = self._make_agent(aid, trajs[rng.randrange(len(trajs))], wl.random_start)
            self._push(t, _ARRIVE, agent)
            aid += 1

    def _make_agent(self, aid: int, traj: Trajectory, random_start: bool) -> AgentState:
        window = self.config.workload.turn_window
        first = self.rng.randrange(traj.turns) if random_start else 0
        end = traj.turns if window <= 0 else min(traj.turns, first + window)
        agent = AgentState(aid, traj, first, end)
        self.agents.append(agent)
        return agent

    def _expected_turn_s(self) -> float:
        """Latency of an average turn on a busy cluster (decode batch as large as the decode
        engine's HBM allows, plus ~1 s of queueing and prefill): only used to size the warm
        start; the warm-up period absorbs the error."""
        stats = self.config.workload.stats
        capacity = self.profile.de_kv_capacity_tokens
        batch = max(1, int(capacity // stats.mean_context))
        tau = decode_step_s(self.profile, batch, batch * stats.mean_context)
        return 1.0 + stats.generated_tokens * tau + self.config.workload.think_time_s

    def _expected_agent_lifetime_s(self) -> float:
        """Little's law: the agents in flight are arrival rate x this lifetime."""
        stats = self.config.workload.stats
        window = self.config.workload.turn_window
        turns = stats.turns if window <= 0 else min(stats.turns, window)
        return turns * self._expected_turn_s()

    # ----- the run -----

    def run(self) -> RunResult:
        started = time.perf_counter()
        wl = self.config.workload
        self._add_agents()
        if wl.mode == "offline":
            total = sum(a.end_turn - a.next_turn for a in self.agents)
            self.total_turns = total
            self.loaded_turns = max(1, int(total * LOADED_FRACTION))
        horizon = wl.horizon_s if wl.mode == "online" else math.inf
        heap = self.heap
        pop = heapq.heappop
        events = 0
        progress = self.progress
        total_turns = max(1, self.total_turns) if wl.mode == "offline" else 0
        while heap:
            t, _, kind, obj, aux = pop(heap)
            if t > horizon:
                break
            self.now = t
            events += 1
            if kind == _DECODE_STEP:
                if aux == obj.version:  # type: ignore[attr-defined]
                    self._on_decode_step(obj)  # type: ignore[arg-type]
            elif kind == _ARRIVE:
                self._on_arrive(obj)  # type: ignore[arg-type]
            elif kind == _KV_READY:
                self._on_kv_ready(obj)  # type: ignore[arg-type]
            elif kind == _BATCH_DONE:
                self._on_batch_done(obj)  # type: ignore[arg-type]
            else:
                self._on_decode_join(obj)  # type: ignore[arg-type]
            if progress is not None and events % _PROGRESS_EVERY == 0:
                progress(self.turns_done / total_turns if total_turns else self.now / wl.horizon_s)
        self.inv.events = events
        if progress is not None:
            progress(1.0)
        end = self.now if wl.mode == "offline" else wl.horizon_s
        return self._result(end, time.perf_counter() - started)

    # ----- arrivals and scheduling -----

    def _on_arrive(self, agent: AgentState) -> None:
        traj = agent.traj
        k = agent.next_turn
        prompt = traj.prompt_tokens[k]
        reusable = min(traj.reused_prefix_tokens[k], agent.stored)
        cached = (reusable // C.BLOCK_TOKENS) * C.BLOCK_TOKENS
        out = traj.output_tokens[k]
        request = Request(
            f"a{agent.aid}t{k}",
            total_tokens=prompt,
            cached_tokens=cached,
            append_tokens=prompt - cached,
            expected_output_tokens=out,
            kv_bytes_per_token=self.bpt,
        )
        turn = TurnState(agent, self.now, request, out)
        self.pending.append(turn)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand the head of the global FIFO queue to the policy (its batch form), unless it
        certainly cannot place it: no decode engine has the HBM the head needs, or every
        prefill engine is over beta. Every policy refuses those cases (NoCapacity), so the
        shortcut changes no decision; it saves the policy's full scan of the cluster, which
        dominates at 1,152 engines. The window passed is the FIFO prefix whose total HBM
        need fits the free HBM of all decode engines together (at most _SCHEDULE_WINDOW)."""
        pending = self.pending
        if not pending:
            return
        head = pending[0].request
        if self._max_free_hbm() < head.hbm_tokens or self._all_prefill_overloaded():
            self.inv.no_capacity += 1
            return
        window: list[Request] = []
        need = 0
        for turn in itertools.islice(pending, _SCHEDULE_WINDOW):
            need += turn.request.hbm_tokens
            if window and need > self.free_hbm_total:
                break
            window.append(turn.request)
        self.inv.schedule_calls += 1
        result = self.lifecycle.schedule(window)
        if result.unscheduled:
            self.inv.no_capacity += 1
        for assignment in result.assignments:
            turn = pending.popleft()
            if assignment.request_id != turn.request.request_id:
                raise RuntimeError("policy answered out of FIFO order")
            self._start(
                turn,
                assignment.prefill_engine_id,
                assignment.decode_engine_id,
                assignment.de_read_fraction,
            )

    def _max_free_hbm(self) -> int:
        # Max-heap of (-free, engine index) with lazy deletion: stale entries (the engine's
        # free HBM changed since) are dropped when they surface.
        heap = self.free_heap
        decodes = self.decode_list
        while True:
            neg_free, i = heap[0]
            de = decodes[i]
            if -neg_free == de.capacity - de.used:
                return -neg_free
            heapq.heappop(heap)

    def _all_prefill_overloaded(self) -> bool:
        if self.beta is None:
            return False
        ranked = self.view.active_by_tokens(Role.PREFILL)
        return not ranked or ranked[0][0] > self.beta

    def _start(self, turn: TurnState, pe_id: str, de_id: str, de_fraction: float) -> None:
        pe = self.prefills[pe_id]
        de = self.decodes[de_id]
        turn.pe = pe
        turn.de = de
        self._book_hbm(de, turn.request.hbm_tokens)
        frac = de.used / de.capacity
        if frac > self.inv.max_de_hbm_fraction:
            self.inv.max_de_hbm_fraction = frac
        cached_bytes = turn.cached * self.bpt
        de_bytes = round(cached_bytes * de_fraction)
        pe_bytes = cached_bytes - de_bytes
        turn.pe_bytes = pe_bytes
        turn.de_bytes = de_bytes
        self.inv.read_bytes_requests += cached_bytes
        now = self.now
        ready = now
        if pe_bytes:
            node = pe.node
            ready = max(
                ready, node.snic_read.reserve(now, pe_bytes), node.dram.reserve(now, pe_bytes)
            )
        if de_bytes:
            node = de.node
            ready = max(
                ready, node.snic_read.reserve(now, de_bytes), node.dram.reserve(now, de_bytes)
            )
        self.inflight[turn.request.request_id] = turn
        self._push(ready, _KV_READY, turn)

    # ----- prefill -----

    def _on_kv_ready(self, turn: TurnState) -> None:
        self.lifecycle.read_done(turn.request.request_id)
        pe = turn.pe
        pe.ready.append(turn)
        if not pe.busy:
            self._start_batch(pe)

    def _start_batch(self, pe: PrefillEngine) -> None:
        profile = self.profile
        now = self.now
        compute = profile.prefill_batch_overhead_s
        budget = C.PREFILL_QUOTA_S - compute
        batch: list[tuple[TurnState, int]] = []
        load_end = now
        ready = pe.ready
        for turn in ready:
            if budget <= 0 and batch:
                break
            remaining = turn.new - turn.done_tokens
            before = turn.cached + turn.done_tokens
            seconds = prefill_chunk_s(profile, remaining, before)
            take = remaining
            if seconds > budget:
                take = min(remaining, tokens_fitting(profile, budget, before))
                if batch and take < C.BLOCK_TOKENS and take < remaining:
                    break  # not worth a sliver: it starts the next batch
                seconds = prefill_chunk_s(profile, take, before)
            if not turn.loaded:
                turn.loaded = True
                load_end = max(load_end, self._load_kv(turn, now))
            batch.append((turn, take))
            compute += seconds
            budget -= seconds
            if take < remaining:
                break  # chunked: the batch is full
        load = load_end - now
        # Layer-wise: loading layer l+1 overlaps computing layer l; the longer of the two
        # sets the pace, plus one layer of the other to fill the pipeline.
        duration = max(compute, load) + min(compute, load) / self.layers
        if compute > self.inv.max_prefill_batch_s:
            self.inv.max_prefill_batch_s = compute
        pe.busy = True
        pe.batch = batch
        self._push(now + duration, _BATCH_DONE, pe)

    def _load_kv(self, turn: TurnState, now: float) -> float:
        """Stream the turn's cached KV from the buffers into the PE's HBM."""
        pe = turn.pe
        end = now
        if turn.pe_bytes:
            nbytes = turn.pe_bytes
            end = max(end, pe.cnic.reserve(now, nbytes), pe.node.dram.reserve(now, nbytes))
        if turn.de_bytes:
            nbytes = turn.de_bytes
            de = turn.de
            end = max(
                end,
                de.cnic.reserve(now, nbytes),
                de.node.dram.reserve(now, nbytes),
                pe.cnic.reserve(now, nbytes),
            )
        return end

    def _on_batch_done(self, pe: PrefillEngine) -> None:
        now = self.now
        bpt = self.bpt
        ready = pe.ready
        for turn, take in pe.batch:
            turn.done_tokens += take
            if turn.done_tokens < turn.new:
                continue  # chunked: still at the head of the ready queue
            ready.popleft()
            turn.first_token = now
            self.lifecycle.prefill_done(turn.request.request_id)
            de = turn.de
            # KV the DE does not hold yet: the PE-side read and the newly computed tokens.
            out_bytes = turn.pe_bytes + turn.new * bpt
            t1 = max(
                pe.cnic.reserve(now, out_bytes),
                de.cnic.reserve(now, out_bytes),
                de.node.dram.reserve(now, out_bytes),
            )
            # Then the whole context DE buffer -> DE HBM.
            full = turn.prompt * bpt
            t2 = max(t1, de.cnic.reserve(t1, full), de.node.dram.reserve(t1, full))
            self._push(t2, _DECODE_JOIN, turn)
        pe.batch = []
        pe.busy = False
        if ready:
            self._start_batch(pe)
        self._dispatch()

    # ----- decode -----

    def _advance(self, de: DecodeEngine) -> None:
        if de.n:
            dt = self.now - de.t_u
            de.v += dt / de.tau
            self.area_batch += de.n * dt
        de.t_u = self.now

    def _book_hbm(self, de: DecodeEngine, delta: int) -> None:
        self.area_hbm += de.used * (self.now - de.t_used)
        de.t_used = self.now
        if delta:
            de.used += delta
            self.free_hbm_total -= delta
            heapq.heappush(self.free_heap, (de.used - de.capacity, de.index))

    def _retime(self, de: DecodeEngine) -> None:
        de.version += 1
        if not de.n:
            return
        ctx = de.ctx_sum + de.n * de.v - de.v_sum
        de.tau = decode_step_s(self.profile, de.n, ctx)
        target = de.heap[0][0]
        self._push(self.now + max(0.0, target - de.v) * de.tau, _DECODE_STEP, de, de.version)

    def _on_decode_join(self, turn: TurnState) -> None:
        de = turn.de
        self._advance(de)
        steps = turn.out - 1  # the first token came from prefill
        turn.join = self.now
        if steps <= 0:
            self._finish_turn(turn)
            self._retime(de)
            self._dispatch()
            return
        de.n += 1
        de.ctx_sum += turn.prompt
        de.v_sum += de.v
        turn.v_join = de.v
        turn.ctx_join = turn.prompt
        de.seq += 1
        heapq.heappush(de.heap, (de.v + steps, de.seq, turn))
        self._retime(de)
        turn.tau_join = de.tau

    def _on_decode_step(self, de: DecodeEngine) -> None:
        self._advance(de)
        heap = de.heap
        limit = de.v + 1e-9
        while heap and heap[0][0] <= limit:
            _, _, turn = heapq.heappop(heap)
            de.n -= 1
            de.ctx_sum -= turn.ctx_join
            de.v_sum -= turn.v_join
            self._finish_turn(turn)
        if not de.n:
            # Reset the continuous counters so float error cannot build up.
            de.ctx_sum = 0
            de.v_sum = 0.0
        self._retime(de)
        self._dispatch()

    def _finish_turn(self, turn: TurnState) -> None:
        now = self.now
        wl = self.config.workload
        rid = turn.request.request_id
        self.lifecycle.release(rid)
        del self.inflight[rid]
        de = turn.de
        self._book_hbm(de, -turn.request.hbm_tokens)
        agent = turn.agent
        measured = wl.mode == "offline" or turn.arrival >= wl.warmup_s
        if measured:
            self.ttft.append(turn.first_token - turn.arrival)
            steps = turn.out - 1
            if steps > 0:
                self.ttst.append(turn.join + turn.tau_join - turn.first_token)
                self.tpot.append((now - turn.join) / steps)
        self.turns_done += 1
        if self.turns_done == self.loaded_turns:
            self.loaded_until = now
        if wl.mode == "offline" or now >= wl.warmup_s:
            # Online throughput counts what completes inside the measurement window.
            self.turns_in_window += 1
            self.output_tokens += turn.out
            self.prompt_tokens += turn.prompt
            self.computed_tokens += turn.new
        # Persist the turn's new Full Blocks (prompt tail + generated tokens).
        stored = ((turn.prompt + turn.out) // C.BLOCK_TOKENS) * C.BLOCK_TOKENS
        write_bytes = max(0, stored - turn.cached) * self.bpt
        self.inv.write_bytes_requests += write_bytes
        node = de.node
        written = max(
            node.snic_write.reserve(now, write_bytes), node.dram.reserve(now, write_bytes)
        )
        agent.stored = stored
        agent.next_turn += 1
        if agent.next_turn >= agent.end_turn:
            agent.done_at = written
            return
        think = self.rng.expovariate(1.0 / wl.think_time_s) if wl.think_time_s > 0 else 0.0
        self._push(max(now + think, written), _ARRIVE, agent)

    # ----- results -----

    def _result(self, end: float, wall_s: float) -> RunResult:
        return build_result(self, end, wall_s, self._diagnostics(end))

    def _diagnostics(self, end: float) -> dict[str, float]:
        count = len(self.decodes)
        for de in self.decodes.values():
            self._advance(de)
            self._book_hbm(de, 0)
        capacity = self.profile.de_kv_capacity_tokens
        return {
            "de_batch_avg": self.area_batch / (end * count) if end > 0 else 0.0,
            "de_hbm_booked_avg": self.area_hbm / (end * count * capacity) if end > 0 else 0.0,
        }


def simulate(
    config: SimConfig,
    trajectories: list[Trajectory] | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    return Simulator(config, trajectories, progress).run()
