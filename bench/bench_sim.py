"""Simulator speed: how long the paper-scale runs take on this machine.

Targets (issue 6): the 2P4D 64K offline run with the 500 trajectories (~78k turns) in <= 60 s
per policy; a 48P96D run (1,152 GPUs) in <= 10 min.

    .venv/bin/python bench/bench_sim.py [--cases 2p4d-500,2p4d-2000,48p96d-12000] [--json F]
    make bench   # the pytest form, bench/bench_sim_test.py (asserts the targets)

Cases: 2p4d-500 = paper-ds660b-2p4d-64k with 500 agents (one per trajectory, every policy);
2p4d-2000 = the paper's Table 3 point (2,000 agents, every policy); 48p96d-12000 = 48P96D
with 24x the 500 agents (paper policy); 48p96d-48000 = the paper's 48K-agent Table 3 point
(paper policy; slow, not in the default set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dualpath_sim.policies import default_order
from dualpath_sim.presets import get_preset
from dualpath_sim.runner import RunSpec, run_one, trajectories_for


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    agents: int
    policies: tuple[str, ...]
    # Wall-time target per policy run, seconds.
    target_s: float


CASES = {
    c.name: c
    for c in (
        Case("2p4d-500", "paper-ds660b-2p4d-64k", 500, tuple(default_order()), 60.0),
        Case("2p4d-2000", "paper-ds660b-2p4d-64k", 2000, tuple(default_order()), 240.0),
        Case("48p96d-12000", "paper-ds660b-48p96d-64k", 12000, ("paper",), 600.0),
        Case("48p96d-48000", "paper-ds660b-48p96d-64k", 48000, ("paper",), 2400.0),
    )
}
DEFAULT_CASES = ("2p4d-500", "2p4d-2000", "48p96d-12000")


def run_case(case: Case, log: bool = True) -> list[dict[str, float | str | bool]]:
    preset = get_preset(case.preset)
    rows: list[dict[str, float | str | bool]] = []
    for policy in case.policies:
        config = preset.config_for_load(case.agents).with_policy(policy)
        trajectories_for(config)  # trace generation is not the simulator's time
        started = time.perf_counter()
        result = run_one(RunSpec(f"{case.name}/{policy}", config))
        wall = time.perf_counter() - started
        row: dict[str, float | str | bool] = {
            "case": case.name,
            "policy": policy,
            "cluster": result.cluster,
            "agents": case.agents,
            "turns": result.turns_completed,
            "events": result.invariants.events,
            "wall_s": round(wall, 2),
            "us_per_turn": round(wall / max(1, result.turns_completed) * 1e6, 1),
            "jct_s": round(result.makespan_s, 1),
            "target_s": case.target_s,
            "ok": wall <= case.target_s,
        }
        rows.append(row)
        if log:
            print(
                f"{case.name:14s} {policy:15s} {result.cluster:7s} turns={result.turns_completed:>9,}"
                f" wall={wall:7.1f}s ({row['us_per_turn']:.0f} us/turn) jct={result.makespan_s:,.0f}s"
                f" target<={case.target_s:g}s {'ok' if row['ok'] else 'SLOW'}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"--cases: unknown {unknown}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    rows = [row for name in names for row in run_case(CASES[name])]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
