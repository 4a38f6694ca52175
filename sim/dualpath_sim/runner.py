"""Run many simulations (policies x loads x cluster shapes), in worker processes if asked,
with progress; online SLO judgement and the capacity search (max sustainable agents/s)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import queue as queue_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from dualpath_sim import constants as C
from dualpath_sim.config import SimConfig
from dualpath_sim.core import simulate
from dualpath_sim.metrics import RunResult
from dualpath_sim.trace import Trajectory, generate_trace

# (run key, fraction done) -> None
ProgressSink = Callable[[str, float], None]


@dataclass(frozen=True)
class RunSpec:
    key: str
    config: SimConfig


@dataclass(frozen=True)
class Slo:
    ttft_s: float = C.TTFT_SLO_S
    tpot_s: float = C.TPOT_SLO_S
    # Which percentile of the measured turns must meet the limits.
    percentile: int = 90

    def __post_init__(self) -> None:
        if self.percentile not in (50, 90, 99):
            raise ValueError(f"slo percentile must be 50, 90 or 99, got {self.percentile}")

    def judge(self, result: RunResult) -> tuple[bool, str]:
        ttft = result.ttft.percentile(self.percentile)
        tpot = result.tpot.percentile(self.percentile)
        ok = result.ttft.count > 0 and ttft <= self.ttft_s and tpot <= self.tpot_s
        detail = (
            f"p{self.percentile} TTFT {ttft:.2f}s (<= {self.ttft_s:g}), "
            f"p{self.percentile} TPOT {tpot * 1e3:.1f}ms (<= {self.tpot_s * 1e3:g})"
        )
        return ok, detail


@lru_cache(maxsize=8)
def _trace(trace: str, count: int, seed: int) -> tuple[Trajectory, ...]:
    return tuple(generate_trace(C.TRACE_STATS[trace], count, seed))


def trajectories_for(config: SimConfig) -> list[Trajectory]:
    wl = config.workload
    return list(_trace(wl.trace, wl.trajectories, wl.seed))


def run_one(
    spec: RunSpec, progress: ProgressSink | None = None, slo: Slo | None = None
) -> RunResult:
    def report(fraction: float) -> None:
        if progress is not None:
            progress(spec.key, fraction)

    result = simulate(spec.config, trajectories_for(spec.config), report)
    if spec.config.workload.mode == "online":
        result.slo_ok, result.slo_detail = (slo or Slo()).judge(result)
    result.extra["key"] = spec.key
    return result


def _worker(spec: RunSpec, updates: queue_mod.Queue[tuple[str, float]], slo: Slo) -> RunResult:
    return run_one(spec, lambda key, frac: updates.put((key, frac)), slo)


def run_many(
    specs: Sequence[RunSpec],
    jobs: int = 1,
    progress: ProgressSink | None = None,
    slo: Slo | None = None,
) -> dict[str, RunResult]:
    """Run every spec; results by key. jobs > 1 uses that many worker processes."""
    slo = slo or Slo()
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("run keys must be unique")
    if jobs <= 1 or len(specs) <= 1:
        return {s.key: run_one(s, progress, slo) for s in specs}
    results: dict[str, RunResult] = {}
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        updates: queue_mod.Queue[tuple[str, float]] = manager.Queue()
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_worker, s, updates, slo): s.key for s in specs}
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5)
                _drain(updates, progress)
                for fut in done:
                    results[futures[fut]] = fut.result()
            _drain(updates, progress)
    return {k: results[k] for k in keys}


def _drain(updates: queue_mod.Queue[tuple[str, float]], progress: ProgressSink | None) -> None:
    while True:
        try:
            key, frac = updates.get_nowait()
        except queue_mod.Empty:
            return
        if progress is not None:
            progress(key, frac)


@dataclass
class CapacityResult:
    policy: str
    # Highest rate tried that met the SLO (0 if none did).
    capacity: float
    # Every run of the search, by rate.
    runs: dict[float, RunResult]


def find_capacity(
    config: SimConfig,
    rates: Sequence[float],
    bracket: tuple[float, float],
    steps: int,
    slo: Slo,
    sweep: dict[float, RunResult] | None = None,
    progress: ProgressSink | None = None,
) -> CapacityResult:
    """Max sustainable agents/s for one policy: the sweep `rates` first (reusing `sweep`
    results when given), then bisection between the best passing and the first failing rate.
    The capacity is the largest rate that met the SLO."""
    runs: dict[float, RunResult] = dict(sweep or {})

    def ok_at(rate: float) -> bool:
        if rate not in runs:
            spec = RunSpec(f"{config.policy}@{rate:.4g}", config.with_workload(arrival_rate=rate))
            runs[rate] = run_one(spec, progress, slo)
        return runs[rate].slo_ok

    for rate in sorted(rates):
        ok_at(rate)
    passing = [r for r, res in runs.items() if res.slo_ok]
    failing = [r for r, res in runs.items() if not res.slo_ok]
    lo = max(passing, default=bracket[0])
    hi = min((r for r in failing if r > lo), default=bracket[1])
    if not passing and not ok_at(lo):
        # Even the bottom of the bracket fails: report 0 (the cluster cannot meet the SLO).
        return CapacityResult(config.policy, 0.0, runs)
    if not failing and ok_at(hi):
        return CapacityResult(config.policy, hi, runs)
    for _ in range(steps):
        mid = round((lo + hi) / 2, 4)
        if mid in (lo, hi):
            break
        if ok_at(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(config.policy, lo, runs)


def _capacity_worker(
    config: SimConfig,
    rates: tuple[float, ...],
    bracket: tuple[float, float],
    steps: int,
    slo: Slo,
    sweep: dict[float, RunResult],
    updates: queue_mod.Queue[tuple[str, float]] | None,
) -> CapacityResult:
    sink: ProgressSink | None = None
    if updates is not None:
        sink = lambda key, frac: updates.put((key, frac))  # noqa: E731
    return find_capacity(config, rates, bracket, steps, slo, sweep, sink)


def find_capacities(
    configs: dict[str, SimConfig],
    rates: Sequence[float],
    bracket: tuple[float, float],
    steps: int,
    slo: Slo,
    sweeps: dict[str, dict[float, RunResult]] | None = None,
    jobs: int = 1,
    progress: ProgressSink | None = None,
) -> dict[str, CapacityResult]:
    """find_capacity for several policies (configs by policy), one process per policy."""
    sweeps = sweeps or {}
    args = {
        name: (cfg, tuple(rates), bracket, steps, slo, sweeps.get(name, {}))
        for name, cfg in configs.items()
    }
    if jobs <= 1 or len(configs) <= 1:
        return {
            name: find_capacity(*a[:5], sweep=a[5], progress=progress) for name, a in args.items()
        }
    out: dict[str, CapacityResult] = {}
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        updates: queue_mod.Queue[tuple[str, float]] = manager.Queue()
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_capacity_worker, *a, updates): n for n, a in args.items()}
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5)
                _drain(updates, progress)
                for fut in done:
                    out[futures[fut]] = fut.result()
            _drain(updates, progress)
    return {name: out[name] for name in configs}
