"""An experiment = a preset run for several policies: headline load, load sweep, P/D sweep,
online capacity search, fidelity checks. Pure orchestration over runner.py."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from dualpath_sim.config import SimConfig
from dualpath_sim.fidelity import Check, check_offline, check_pd_sweep
from dualpath_sim.metrics import RunResult
from dualpath_sim.presets import Preset
from dualpath_sim.runner import (
    CapacityResult,
    ProgressSink,
    RunSpec,
    Slo,
    find_capacities,
    run_many,
    trajectories_for,
)
from dualpath_sim.trace import summarize_trace


def shape_label(prefill_nodes: int, decode_nodes: int) -> str:
    return f"{prefill_nodes}P{decode_nodes}D"


@dataclass
class Experiment:
    preset: Preset
    policies: list[str]
    loads: list[float]
    # policy -> load -> result (offline: agents; online: agents/s).
    sweep: dict[str, dict[float, RunResult]] = field(default_factory=dict)
    # shape label -> policy -> result.
    pd: dict[str, dict[str, RunResult]] = field(default_factory=dict)
    capacity: dict[str, CapacityResult] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    wall_s: float = 0.0
    slo: Slo = field(default_factory=Slo)

    @property
    def slo_percentile(self) -> int:
        return self.slo.percentile

    @property
    def slo_ttft_s(self) -> float:
        return self.slo.ttft_s

    @property
    def slo_tpot_s(self) -> float:
        return self.slo.tpot_s

    @property
    def mode(self) -> str:
        return self.preset.config.workload.mode

    @property
    def headline_load(self) -> float:
        return self.loads[0]

    def main(self) -> dict[str, RunResult]:
        """The result per policy the table shows: headline load (offline) or the run at the
        measured capacity (online; the lowest rate tried if none met the SLO)."""
        if self.mode == "offline":
            return {p: self.sweep[p][self.headline_load] for p in self.policies}
        out = {}
        for p in self.policies:
            cap = self.capacity.get(p)
            runs = cap.runs if cap else self.sweep[p]
            rate = cap.capacity if cap and cap.capacity in runs else min(runs)
            out[p] = runs[rate]
        return out

    def as_dict(self) -> dict[str, Any]:
        cfg = self.preset.config
        trace = summarize_trace(trajectories_for(cfg), cfg.workload.stats.max_context)
        return {
            "preset": self.preset.name,
            "description": self.preset.description,
            "mode": self.mode,
            "config": asdict(cfg),
            "compute_profile": asdict(cfg.profile),
            "trace": trace.as_dict(),
            "policies": self.policies,
            "loads": self.loads,
            "headline": {p: r.as_dict(series=False) for p, r in self.main().items()},
            "sweep": {
                p: {str(load): r.as_dict(series=False) for load, r in runs.items()}
                for p, runs in self.sweep.items()
            },
            "pd_sweep": {
                shape: {p: r.as_dict(series=False) for p, r in runs.items()}
                for shape, runs in self.pd.items()
            },
            "capacity": {
                p: {
                    "agents_per_s": c.capacity,
                    "runs": {
                        str(rate): {
                            "slo_ok": r.slo_ok,
                            "slo_detail": r.slo_detail,
                            "turns_per_s": r.turns_per_s,
                        }
                        for rate, r in sorted(c.runs.items())
                    },
                }
                for p, c in self.capacity.items()
            },
            "slo": asdict(self.slo),
            "fidelity": [c.as_dict() for c in self.checks],
            "wall_s": self.wall_s,
        }


def _scaled_agents(preset: Preset, prefill_nodes: int, decode_nodes: int, agents: int) -> int:
    hw = preset.config.hardware
    base = hw.prefill_nodes + hw.decode_nodes
    return max(1, round(agents * (prefill_nodes + decode_nodes) / base))


def run_experiment(
    preset: Preset,
    policies: list[str],
    loads: list[float] | None = None,
    jobs: int = 1,
    progress: ProgressSink | None = None,
    slo: Slo | None = None,
    capacity: bool = True,
    base: SimConfig | None = None,
    policy_params: dict[str, dict[str, Any]] | None = None,
) -> Experiment:
    """Run `policies` on the preset (or on `base`, a modified copy of its config), with
    optional per-policy parameter overrides (validated by the policy core)."""
    import time

    started = time.perf_counter()
    slo = slo or Slo()
    cfg = base or preset.config
    loads = list(loads or preset.loads)
    exp = Experiment(preset, policies, loads, slo=slo)
    online = cfg.workload.mode == "online"

    params = policy_params or {}

    def with_policy(c: SimConfig, policy: str) -> SimConfig:
        return c.with_policy(policy, **params.get(policy, {}))

    def at(load: float, policy: str) -> SimConfig:
        c = with_policy(cfg, policy)
        if online:
            return c.with_workload(arrival_rate=float(load))
        return c.with_workload(agents=int(load))

    specs = [RunSpec(f"{p}@{load:g}", at(load, p)) for p in policies for load in loads]
    base_shape = (cfg.hardware.prefill_nodes, cfg.hardware.decode_nodes)
    for shape in preset.pd_sweep:
        if shape == base_shape:
            continue  # already in the load sweep
        label = shape_label(*shape)
        for p in policies:
            c = with_policy(
                dataclasses.replace(
                    cfg,
                    hardware=dataclasses.replace(
                        cfg.hardware, prefill_nodes=shape[0], decode_nodes=shape[1]
                    ),
                ),
                p,
            )
            agents = _scaled_agents(preset, *shape, cfg.workload.agents)
            specs.append(RunSpec(f"{p}@{label}", c.with_workload(agents=agents)))
    results = run_many(specs, jobs, progress, slo)
    for p in policies:
        exp.sweep[p] = {load: results[f"{p}@{load:g}"] for load in loads}
    if preset.pd_sweep:
        base_label = shape_label(cfg.hardware.prefill_nodes, cfg.hardware.decode_nodes)
        for shape in preset.pd_sweep:
            label = shape_label(*shape)
            exp.pd[label] = {
                p: exp.sweep[p][loads[0]] if label == base_label else results[f"{p}@{label}"]
                for p in policies
            }
    if online and capacity:
        exp.capacity = find_capacities(
            {p: with_policy(cfg, p) for p in policies},
            loads,
            preset.capacity_bracket,
            preset.capacity_steps,
            slo,
            exp.sweep,
            jobs,
            progress,
        )
    if preset.targets is not None and not online:
        exp.checks = check_offline(exp.main(), preset.targets)
    if exp.pd and preset.pd_tracking_tolerance is not None:
        exp.checks += check_pd_sweep(
            exp.pd, cfg.hardware.snic_read_bytes_per_s, preset.pd_tracking_tolerance
        )
    exp.wall_s = time.perf_counter() - started
    return exp
