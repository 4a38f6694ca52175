"""Local stack benchmark: where the bottleneck is as the storage-NIC cap rises.

Plays the demo's workload (`dualpath demo`: 1 prefill + 2 decode agents on loopback, real
bytes) under prefill-only and dualpath-split at several per-node storage-NIC caps, side by
side in one run. At the demo's default cap (0.48 Gbit/s = 60 MB/s) the SNICs are the
bottleneck (utilisation ~95%) and pooling three of them gives ~3x; as the cap rises, the
stack's own per-turn costs (CPU of this machine, RPC and persist latency) take over and
the two policies converge. Reports turns/s, speedup, SNIC utilisation and the CPU the stack
used, with the load average (the machine may be shared).

    python bench/bench_demo.py                          # caps 0.48 1.6 8, full workload
    python bench/bench_demo.py --quick --json out.json  # caps 0.48 8, reduced workload
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from dualpath_local.config import DemoConfig
from dualpath_local.runner import run_demo
from dualpath_local.workload import WorkloadConfig
from rich.console import Console
from rich.table import Table

POLICIES = ("prefill-only", "dualpath-split")


def run_cap(cap_gbps: float, workload: WorkloadConfig) -> dict[str, Any]:
    config = DemoConfig(
        workload=workload,
        snic_read_gbps=cap_gbps,
        policies=POLICIES,
        json_path=None,
        chart_path=None,
    )
    quiet = Console(file=io.StringIO(), width=160)
    result = run_demo(config, quiet)
    phases = {p.policy: p for p in result.phases}
    row: dict[str, Any] = {"snic_read_gbps": cap_gbps, "ok": result.ok}
    for policy, p in phases.items():
        row[policy] = {
            "turns_per_s": p.turns_per_s,
            "speedup": p.speedup,
            "snic_utilisation": {n.node: n.utilisation for n in p.nodes},
            "read_mb_per_s": p.read_bytes_per_s / 1e6,
            "stack_cpu_cores": p.stack_cpu_cores,
            "loadavg_1m": p.loadavg_1m,
            "checksum_failures": p.checksum_failures,
        }
    return row


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="local stack: turns/s vs storage-NIC cap (1P2D)")
    columns = (
        "cap Gbit/s",
        "policy",
        "turns/s",
        "speedup",
        "read MB/s",
        "SNIC util max",
        "stack CPU cores",
        "load avg",
        "checksum fail",
    )
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        for policy in POLICIES:
            p = row[policy]
            t.add_row(
                f"{row['snic_read_gbps']:g}",
                policy,
                f"{p['turns_per_s']:.2f}",
                f"{p['speedup']:.2f}x",
                f"{p['read_mb_per_s']:.0f}",
                f"{max(p['snic_utilisation'].values()):.0%}",
                f"{p['stack_cpu_cores']:.2f}",
                f"{p['loadavg_1m']:.1f}",
                str(p["checksum_failures"]),
            )
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", type=float, nargs="*", default=None, help="Gbit/s per node")
    parser.add_argument("--quick", action="store_true", help="reduced workload, caps 0.48 and 8")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        workload = WorkloadConfig(trajectories=12, turns_per_trajectory=3, context_scale=0.2)
        caps = args.caps or [0.48, 8.0]
    else:
        workload = WorkloadConfig()
        caps = args.caps or [0.48, 1.6, 8.0]
    rows = [run_cap(cap, workload) for cap in caps]
    Console(width=160).print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
