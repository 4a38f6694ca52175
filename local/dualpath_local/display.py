"""What the demo shows: a live view of a phase and the results table (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dualpath_local.results import PhaseResult

POLICY_LABELS = {
    "prefill-only": "prefill-only (baseline: PE reads only)",
    "paper": "paper (DualPath: shorter read queue)",
    "dualpath-split": "dualpath-split (ours: split each read)",
    "round-robin": "round-robin",
}


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.0f} MB"


def gbps(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e9:.3f}"


@dataclass(frozen=True)
class NodeLive:
    node: str
    read_bytes_per_s: float
    cap_bytes_per_s: float
    queued_reads: int


def live_view(
    policy: str,
    done: int,
    total: int,
    elapsed_s: float,
    nodes: Sequence[NodeLive],
    paths: Mapping[str, int],
    errors: int,
) -> RenderableType:
    """One phase in progress: turns done, paths taken, each node's storage read rate
    against its storage-NIC cap and its read queue."""
    rate = done / max(elapsed_s, 1e-9)
    head = Table.grid(padding=(0, 1))
    for _ in range(4):
        head.add_column(no_wrap=True)
    head.add_row(
        Text(f"{policy:<15}", style="bold cyan"),
        ProgressBar(total=max(total, 1), completed=done, width=24),
        Text(f"{done}/{total} turns {elapsed_s:5.1f} s {rate:5.2f} turns/s"),
        Text(f" {errors} errors", style="bold red") if errors else Text(""),
    )
    reads = Text(
        f"{'':16}reads so far: PE {paths.get('pe_read', 0)} / DE {paths.get('de_read', 0)} / "
        f"split {paths.get('split', 0)}",
        style="dim",
    )
    grid = Table.grid(padding=(0, 1))
    for _ in range(3):
        grid.add_column(no_wrap=True)
    for n in nodes:
        cap = max(n.cap_bytes_per_s, 1.0)
        grid.add_row(
            Text(f"  {n.node:<13}"),
            ProgressBar(total=cap, completed=min(n.read_bytes_per_s, cap), width=24),
            Text(
                f"{n.read_bytes_per_s / 1e6:4.0f}/{cap / 1e6:.0f} MB/s SNIC, "
                f"{n.queued_reads:2d} reads queued"
            ),
        )
    return Group(head, reads, grid)


def results_table(results: Sequence[PhaseResult], title: str, width: int = 120) -> Table:
    """Per policy: turns/s and speedup, then per node the storage read rate (GB/s) and its
    storage-NIC utilisation, the read paths taken and the checksum failures. Under 110
    columns the table drops its borders and the paths (they are in the lines below it)."""
    compact = width < 110
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
        collapse_padding=compact,
        pad_edge=not compact,
    )
    table.add_column("policy", no_wrap=True)
    table.add_column("turns/s", justify="right", no_wrap=True)
    table.add_column("speedup", justify="right", no_wrap=True)
    nodes = [n.node for n in results[0].nodes] if results else []
    for node in nodes:
        table.add_column(f"{node}\nGB/s SNIC", justify="right", no_wrap=True)
    if not compact:
        table.add_column("reads\nPE/DE/split", justify="right", no_wrap=True)
    table.add_column("checksum\nfailures", justify="right", no_wrap=True)
    for r in results:
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        paths = "/".join(str(r.paths.get(p, 0)) for p in ("pe_read", "de_read", "split"))
        cells = [
            r.policy,
            f"{r.turns_per_s:.2f}",
            speed,
            *(f"{gbps(n.read_bytes_per_s)} {n.utilisation:4.0%}" for n in r.nodes),
            *([] if compact else [paths]),
            str(r.checksum_failures),
        ]
        table.add_row(*cells, style=None if r.ok else "red")
    return table


def verification_lines(results: Sequence[PhaseResult]) -> list[str]:
    lines = []
    for r in results:
        lines.append(
            f"{r.policy}: {r.turns}/{r.turns_expected} turns in {r.wall_s:.1f} s (load p50/p90 "
            f"{r.load_s_p50:.2f}/{r.load_s_p90:.2f} s), reads PE/DE/split "
            f"{'/'.join(str(r.paths.get(p, 0)) for p in ('pe_read', 'de_read', 'split'))}, "
            f"{r.de_read_share:.0%} of the KV read through decode nodes' SNICs, "
            f"{r.blocks_verified:,}/{r.blocks_expected:,} blocks loaded and verified (CRC32 per "
            f"layer), {r.bytes_loaded / 1e9:.2f} GB loaded, spot checks byte-exact "
            f"{r.spot_checks - r.spot_check_failures}/{r.spot_checks}, checksum failures "
            f"{r.checksum_failures}, placement mismatches {r.placement_mismatches}; stack CPU "
            f"{r.stack_cpu_cores:.2f} cores (load average {r.loadavg_1m:.1f})"
            + (f", ERRORS: {len(r.errors)} (first: {r.errors[0]})" if r.errors else "")
        )
    return lines


def fault_lines(results: Sequence[PhaseResult]) -> list[str]:
    """What faults cost each phase that had any: failed turns (the target is 0), fallbacks,
    retries, restarts, and per chaos event the dip and the recovery."""
    lines = []
    for r in results:
        if not (r.retries or r.fallbacks or r.restarts or r.chaos or r.errors):
            continue
        lines.append(
            f"{r.policy} faults: {len(r.errors)} turns failed, {r.fallbacks} loads fell back to "
            f"the prefill node's own storage, {r.retries} turn attempts played again, "
            f"{r.failures_reported} agent failures reported to the controller, processes "
            f"restarted by the supervisor: {r.restarts}"
        )
        for c in r.chaos:
            down = c.get("down_s")
            dip = c.get("dip_share")
            back = c.get("recovery_s")
            lines.append(
                f"  {c['event']} at {c['applied_s']:.1f} s: "
                + (f"down {down:.1f} s" if isinstance(down, float) else "not back in the phase")
                + (
                    f", throughput dipped to {dip:.0%} of the phase's"
                    if isinstance(dip, float)
                    else ""
                )
                + (
                    f", recovered {back:.1f} s after the event"
                    if isinstance(back, float)
                    else ", not recovered within the phase"
                )
                + (f", error: {c['error']}" if c.get("error") else "")
            )
    return lines
