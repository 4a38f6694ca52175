"""PNG plots a person can read: throughput vs load, and per-node SNIC utilisation over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from dualpath_sim.config import ORACLE
from dualpath_sim.experiment import Experiment
from dualpath_sim.metrics import RunResult
from dualpath_sim.policies import DISPLAY_NAMES

# One colour per policy, stable across plots.
COLOURS = {
    "prefill-only": "#7f7f7f",
    "round-robin": "#ff7f0e",
    "paper": "#1f77b4",
    "dualpath-split": "#2ca02c",
    ORACLE: "#000000",
}
MARKERS = {
    "prefill-only": "s",
    "round-robin": "^",
    "paper": "o",
    "dualpath-split": "D",
    ORACLE: "*",
}
# Above this many nodes, per-node lines become a band (min..max) plus role means.
MAX_NODE_LINES = 12


def _style(policy: str) -> dict[str, object]:
    return {
        "color": COLOURS.get(policy),
        "marker": MARKERS.get(policy, "o"),
        "label": DISPLAY_NAMES.get(policy, policy),
        "linestyle": "--" if policy == ORACLE else "-",
    }


def plot_throughput_vs_load(exp: Experiment, path: Path) -> Path:
    online = exp.mode == "online"
    panels = 2 if online else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), squeeze=False)
    ax = axes[0][0]
    for policy in exp.policies:
        runs = exp.capacity[policy].runs if online and policy in exp.capacity else exp.sweep[policy]
        loads = sorted(runs)
        tput = [runs[x].turns_per_s for x in loads]
        ax.plot(loads, tput, **_style(policy))  # type: ignore[arg-type]
        if online:
            bad = [x for x in loads if not runs[x].slo_ok]
            ax.scatter(
                bad,
                [runs[x].turns_per_s for x in bad],
                s=90,
                facecolors="none",
                edgecolors="red",
                zorder=5,
            )
            cap = exp.capacity.get(policy)
            if cap is not None and cap.capacity > 0:
                ax.axvline(cap.capacity, color=COLOURS.get(policy), linestyle=":", alpha=0.8)
    first = next(iter(exp.main().values()))
    if online:
        ax.set_xlabel("agent arrival rate (agents/s)")
        ax.set_ylabel("completed turns/s (measurement window)")
        ax.set_title(
            f"{first.model} {first.cluster}: throughput vs load\n"
            "red ring = SLO missed; dotted line = capacity"
        )
    else:
        ax.set_xlabel("agents (all start at t=0)")
        ax.set_ylabel("throughput: turns / JCT (turns/s)")
        ax.set_title(f"{first.model} {first.cluster}: offline throughput vs load")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=9)
    if online:
        ax2 = axes[0][1]
        for policy in exp.policies:
            runs = exp.capacity[policy].runs if policy in exp.capacity else exp.sweep[policy]
            loads = sorted(runs)
            ax2.plot(loads, [runs[x].ttft.p90 for x in loads], **_style(policy))  # type: ignore[arg-type]
        ax2.axhline(4.0, color="red", linestyle="--", label="TTFT SLO (4 s)")
        ax2.set_yscale("log")
        ax2.set_xlabel("agent arrival rate (agents/s)")
        ax2.set_ylabel("p90 time to first token (s, log)")
        ax2.set_title("latency vs load")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput_vs_snic(exp: Experiment, path: Path) -> Path:
    """P/D sweep: throughput against the cluster's total storage-NIC bandwidth."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    per_node = exp.preset.config.hardware.snic_read_bytes_per_s / 1e9
    for policy in exp.policies:
        points = []
        for label, runs in exp.pd.items():
            r = runs[policy]
            points.append((len(r.nodes) * per_node, r.turns_per_s, label))
        points.sort()
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.scatter(
            xs,
            ys,
            color=COLOURS.get(policy),
            marker=MARKERS.get(policy, "o"),
            label=DISPLAY_NAMES.get(policy, policy),
            s=50,
        )
        if policy == "paper":
            for x, y, label in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    first = next(iter(exp.main().values()))
    ax.set_xlabel("total storage-NIC read bandwidth of the cluster (GB/s)")
    ax.set_ylabel("throughput: turns / JCT (turns/s)")
    ax.set_title(f"{first.model}: P/D sweep (labels = prefill/decode nodes)")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series_matrix(result: RunResult) -> tuple[np.ndarray, list[str], list[str]]:
    length = max((len(n.read_series) for n in result.nodes), default=0)
    matrix = np.zeros((len(result.nodes), length))
    for i, node in enumerate(result.nodes):
        matrix[i, : len(node.read_series)] = node.read_series
    return matrix, [n.node for n in result.nodes], [n.role for n in result.nodes]


def plot_snic_utilisation(exp: Experiment, path: Path) -> Path:
    """One panel per policy (Oracle has no I/O): each node's storage-read utilisation."""
    main = {p: r for p, r in exp.main().items() if p != ORACLE}
    fig, axes = plt.subplots(
        len(main), 1, figsize=(11, 2.6 * len(main) + 0.6), sharex=True, squeeze=False
    )
    for ax, (policy, result) in zip(axes[:, 0], main.items(), strict=True):
        matrix, names, roles = _series_matrix(result)
        t = (np.arange(matrix.shape[1]) + 0.5) * result.bin_s
        if len(names) <= MAX_NODE_LINES:
            shades = {"prefill": plt.cm.Reds, "decode": plt.cm.Blues}  # type: ignore[attr-defined]
            counts = {r: roles.count(r) for r in set(roles)}
            seen = {"prefill": 0, "decode": 0}
            for row, name, role in zip(matrix, names, roles, strict=True):
                seen[role] += 1
                shade = shades[role](0.45 + 0.45 * seen[role] / max(1, counts[role]))
                ax.plot(
                    t,
                    row * 100,
                    color=shade,
                    lw=1.2,
                    linestyle="-" if role == "prefill" else "--",
                    label=name,
                )
        else:
            ax.fill_between(
                t,
                matrix.min(0) * 100,
                matrix.max(0) * 100,
                color="0.85",
                label="min..max over nodes",
            )
            for role, colour in (("prefill", "#d62728"), ("decode", "#1f77b4")):
                rows = matrix[[r == role for r in roles]]
                if len(rows):
                    ax.plot(
                        t, rows.mean(0) * 100, color=colour, lw=1.5, label=f"{role} nodes (mean)"
                    )
        start, end = result.loaded_window
        ax.axvspan(start, end, color="green", alpha=0.04)
        ax.set_ylim(0, 105)
        ax.set_ylabel("SNIC read %")
        ax.set_title(
            f"{DISPLAY_NAMES.get(policy, policy)}: max/avg {result.snic_read_max_over_avg:.2f}"
            f" (red solid = prefill nodes, blue dashed = decode nodes)",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("simulated time (s); shaded green = loaded window used for max/avg")
    first = next(iter(main.values()))
    fig.suptitle(f"{first.model} {first.cluster}: storage-NIC read utilisation per node", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(exp: Experiment, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    name = exp.preset.name
    written = []
    if len(exp.loads) > 1 or exp.mode == "online":
        written.append(plot_throughput_vs_load(exp, directory / f"{name}-throughput-vs-load.png"))
    if exp.pd:
        written.append(plot_throughput_vs_snic(exp, directory / f"{name}-throughput-vs-snic.png"))
    if any(p != ORACLE for p in exp.policies):
        written.append(plot_snic_utilisation(exp, directory / f"{name}-snic-utilisation.png"))
    return written
