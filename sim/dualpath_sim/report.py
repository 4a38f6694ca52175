"""The experiment as tables (rich) and as a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dualpath_sim.config import ORACLE
from dualpath_sim.experiment import Experiment
from dualpath_sim.fidelity import BASELINE, throughput
from dualpath_sim.metrics import RunResult
from dualpath_sim.policies import DISPLAY_NAMES


def _name(policy: str) -> str:
    return DISPLAY_NAMES.get(policy, policy)


def _balance(result: RunResult) -> str:
    if result.policy == ORACLE:
        return "-"
    return f"{result.snic_read_max_over_avg:.2f}"


def _util(result: RunResult) -> str:
    if result.policy == ORACLE:
        return "-"
    return f"{result.snic_read_utilisation_max:.0%} / {result.snic_read_utilisation_avg:.0%}"


def _lat(result: RunResult) -> tuple[str, str]:
    t, p = result.ttft, result.tpot
    return (
        f"{t.p50:.2f} / {t.p90:.2f} / {t.p99:.2f}",
        f"{p.p50 * 1e3:.0f} / {p.p90 * 1e3:.0f}",
    )


def offline_table(exp: Experiment) -> Table:
    main = exp.main()
    basic = main.get(BASELINE)
    first = next(iter(main.values()))
    title = (
        f"{exp.preset.name}: {first.model}, {first.cluster}, offline, "
        f"{int(exp.headline_load)} agents ({first.turns_completed:,} turns)"
    )
    table = Table(title=title)
    for col, justify in (
        ("policy", "left"),
        ("JCT s", "right"),
        ("turns/s", "right"),
        ("out tok/s", "right"),
        ("x Basic", "right"),
        ("SNIC max/avg", "right"),
        ("SNIC util max / avg", "right"),
        ("TTFT p50/p90/p99 s", "right"),
        ("TPOT p50/p90 ms", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for policy, r in main.items():
        ratio = f"{throughput(r) / throughput(basic):.2f}" if basic else "-"
        ttft, tpot = _lat(r)
        table.add_row(
            _name(policy),
            f"{r.makespan_s:,.0f}",
            f"{r.turns_per_s:.1f}",
            f"{r.output_tokens_per_s:,.0f}",
            ratio,
            _balance(r),
            _util(r),
            ttft,
            tpot,
        )
    return table


def online_table(exp: Experiment) -> Table:
    main = exp.main()
    caps = {p: c.capacity for p, c in exp.capacity.items()}
    first = next(iter(main.values()))
    table = Table(
        title=f"{exp.preset.name}: {first.model}, {first.cluster}, online: max agents/s with "
        f"p{exp.slo_percentile} TTFT <= {exp.slo_ttft_s:g} s and TPOT <= {exp.slo_tpot_s * 1e3:g} ms"
        " (latency at that rate)"
    )
    for col in (
        "policy",
        "capacity agents/s",
        "x Basic",
        "turns/s",
        "SNIC max/avg",
        "SNIC util max / avg",
        "TTFT p50/p90/p99 s",
        "TPOT p50/p90 ms",
        "SLO at capacity",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    basic = caps.get(BASELINE, 0.0)
    for policy, r in main.items():
        cap = caps.get(policy)
        ratio = f"{cap / basic:.2f}" if cap is not None and basic > 0 else "-"
        ttft, tpot = _lat(r)
        table.add_row(
            _name(policy),
            f"{cap:.3g}" if cap is not None else "-",
            ratio,
            f"{r.turns_per_s:.1f}",
            _balance(r),
            _util(r),
            ttft,
            tpot,
            "ok" if r.slo_ok else "missed",
        )
    return table


def sweep_table(exp: Experiment) -> Table | None:
    if len(exp.loads) < 2:
        return None
    unit = "agents" if exp.mode == "offline" else "agents/s"
    table = Table(title=f"throughput (turns/s) vs load ({unit})")
    table.add_column("policy")
    loads = sorted(exp.loads)
    for load in loads:
        table.add_column(f"{load:g}", justify="right")
    for policy, runs in exp.sweep.items():
        cells = []
        for load in loads:
            r = runs[load]
            mark = "" if exp.mode == "offline" or r.slo_ok else " x"
            cells.append(f"{r.turns_per_s:.1f}{mark}")
        table.add_row(_name(policy), *cells)
    if exp.mode == "online":
        table.caption = "x = SLO missed at that rate"
    return table


def pd_table(exp: Experiment) -> Table | None:
    if not exp.pd:
        return None
    table = Table(title="P/D sweep: throughput (turns/s) vs total storage-NIC bandwidth")
    table.add_column("cluster")
    table.add_column("SNIC GB/s (all / prefill)", justify="right")
    for policy in exp.policies:
        table.add_column(_name(policy), justify="right")
    table.add_column("paper / Basic", justify="right")
    for label, runs in exp.pd.items():
        any_run = next(iter(runs.values()))
        nodes = len(any_run.nodes)
        prefill = sum(1 for n in any_run.nodes if n.role == "prefill")
        per_node = exp.preset.config.hardware.snic_read_bytes_per_s / 1e9
        ratio = "-"
        if "paper" in runs and BASELINE in runs:
            ratio = f"{throughput(runs['paper']) / throughput(runs[BASELINE]):.2f}"
        table.add_row(
            label,
            f"{nodes * per_node:.0f} / {prefill * per_node:.0f}",
            *(f"{runs[p].turns_per_s:.1f}" for p in exp.policies),
            ratio,
        )
    return table


def fidelity_table(exp: Experiment) -> Table | None:
    if not exp.checks:
        return None
    table = Table(title="fidelity targets (issue 6; paper §7)")
    for col in ("check", "value", "target", "paper", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in exp.checks:
        table.add_row(c.name, f"{c.value:.3f}", c.target, c.paper, "yes" if c.ok else "NO")
    return table


def print_report(exp: Experiment, console: Console | None = None) -> None:
    console = console or Console()
    main_table = offline_table(exp) if exp.mode == "offline" else online_table(exp)
    console.print(main_table)
    for extra in (sweep_table(exp), pd_table(exp), fidelity_table(exp)):
        if extra is not None:
            console.print(extra)
    console.print(
        "SNIC max/avg: max over mean of per-node storage-read bytes while the cluster is "
        "loaded (offline: until 90% of turns are done; online: measurement window). "
        f"Wall time {exp.wall_s:.1f} s."
    )


def write_json(exp: Experiment, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(exp.as_dict(), indent=2, default=str) + "\n")
