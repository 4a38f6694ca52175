"""The demo's PNG: turns/s per policy, storage reads per node, and the pooled read rate over
time (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dualpath_local.results import PhaseResult

COLORS = {"prefill-only": "#9e9e9e", "paper": "#1f77b4", "dualpath-split": "#d62728"}


def write_chart(results: Sequence[PhaseResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_turns, ax_nodes, ax_time) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1.4, 1.6]}
    )
    policies = [r.policy for r in results]
    colors = [COLORS.get(p, "#2ca02c") for p in policies]

    bars = ax_turns.bar(policies, [r.turns_per_s for r in results], color=colors)
    for bar, r in zip(bars, results, strict=True):
        label = f"{r.turns_per_s:.2f}" + (f"\n{r.speedup:.2f}x" if r.speedup else "")
        ax_turns.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax_turns.set_ylabel("turns / s")
    ax_turns.set_title("Throughput (same workload)")
    ax_turns.margins(y=0.25)
    ax_turns.tick_params(axis="x", labelsize=8)

    nodes = [n.node for n in results[0].nodes] if results else []
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(nodes))]
        ax_nodes.bar(
            xs,
            [n.read_bytes_per_s / 1e6 for n in r.nodes],
            width,
            label=r.policy,
            color=colors[i],
        )
    if results and results[0].nodes:
        cap = results[0].nodes[0].snic_cap_bytes_per_s / 1e6
        ax_nodes.axhline(cap, color="black", linestyle="--", linewidth=1)
        ax_nodes.annotate("storage NIC cap", (-0.4, cap), va="bottom", ha="left", fontsize=8)
    ax_nodes.set_xticks(range(len(nodes)), nodes)
    ax_nodes.set_ylabel("MB/s read from storage")
    ax_nodes.set_title("Storage reads per node")
    ax_nodes.legend(fontsize=8, loc="upper right")
    ax_nodes.margins(y=0.3)

    for i, r in enumerate(results):
        if r.timeline:
            ts, rates = zip(*r.timeline, strict=True)
            ax_time.plot(ts, [x / 1e6 for x in rates], color=colors[i], label=r.policy)
    if results and results[0].nodes:
        one = results[0].nodes[0].snic_cap_bytes_per_s / 1e6
        for k, label in ((1, "1 SNIC"), (len(results[0].nodes), "all SNICs")):
            ax_time.axhline(one * k, color="black", linestyle=":", linewidth=1)
            ax_time.annotate(label, (0, one * k), va="bottom", fontsize=8)
    ax_time.set_ylim(bottom=0)
    ax_time.set_xlabel("seconds since the phase started")
    ax_time.set_ylabel("MB/s, all nodes together")
    ax_time.set_title("Pooled storage read rate")
    ax_time.legend(fontsize=8)

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
