"""A simulator run's outcome: latency summaries, per-node storage-NIC usage over the loaded
window, invariants, from the simulator's state at the end of the run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dualpath_sim.metrics import LatencySummary, NodeUsage, RunResult

if TYPE_CHECKING:
    from dualpath_sim.core import Simulator


def build_result(sim: Simulator, end: float, wall_s: float, extra: dict[str, float]) -> RunResult:
    cfg = sim.config
    wl = cfg.workload
    if wl.mode == "online":
        # Turns still waiting for their first token at the horizon count with the wait
        # they have had so far, so an overloaded run cannot hide its backlog.
        for turn in list(sim.pending) + list(sim.inflight.values()):
            if turn.arrival >= wl.warmup_s and turn.first_token < 0:
                sim.ttft.append(end - turn.arrival)
    span = end if wl.mode == "offline" else end - wl.warmup_s
    # The loaded window: offline from 0 until LOADED_FRACTION of the turns are done,
    # online the measurement window.
    if wl.mode == "offline":
        window = (0.0, sim.loaded_until if sim.loaded_until > 0 else end)
    else:
        window = (wl.warmup_s, end)
    first_bin = int(window[0] / cfg.bin_s)
    last_bin = max(first_bin + 1, math.ceil(window[1] / cfg.bin_s))
    nodes = []
    for node in sim.nodes:
        link = node.snic_read
        bytes_per_bin = link.bytes_per_s * cfg.bin_s
        finite = math.isfinite(bytes_per_bin)
        series = [b / bytes_per_bin for b in link.bins] if finite else []
        nodes.append(
            NodeUsage(
                node=node.name,
                role="prefill" if node.prefill else "decode",
                read_bytes=link.bytes_total,
                write_bytes=node.snic_write.bytes_total,
                read_utilisation=(link.busy_s / end) if end > 0 else 0.0,
                read_bytes_loaded=int(sum(link.bins[first_bin:last_bin])),
                read_series=series,
            )
        )
    sim.inv.read_bytes_links = sum(n.snic_read.bytes_total for n in sim.nodes)
    sim.inv.write_bytes_links = sum(n.snic_write.bytes_total for n in sim.nodes)
    done_agents = sum(1 for a in sim.agents if a.done_at >= 0)
    makespan = end
    if wl.mode == "offline":
        makespan = max((a.done_at for a in sim.agents), default=end)
    return RunResult(
        policy=cfg.policy,
        label=cfg.hardware.label,
        mode=wl.mode,
        model=cfg.model,
        cluster=cfg.hardware.label,
        agents=len(sim.agents),
        arrival_rate=wl.arrival_rate,
        makespan_s=makespan if wl.mode == "offline" else span,
        turns_completed=sim.turns_in_window,
        agents_completed=done_agents,
        output_tokens=sim.output_tokens,
        prompt_tokens=sim.prompt_tokens,
        computed_tokens=sim.computed_tokens,
        ttft=LatencySummary.of(sim.ttft),
        tpot=LatencySummary.of(sim.tpot),
        ttst=LatencySummary.of(sim.ttst),
        nodes=nodes,
        bin_s=cfg.bin_s,
        loaded_window=window,
        invariants=sim.inv,
        wall_s=wall_s,
        extra=extra,
    )
