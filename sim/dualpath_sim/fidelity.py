"""Compare a run set with the paper's evaluation targets (issue 6 fidelity targets)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dualpath_sim.config import ORACLE
from dualpath_sim.metrics import RunResult
from dualpath_sim.presets import FidelityTargets

BASELINE = "prefill-only"


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    target: str
    ok: bool
    paper: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def throughput(result: RunResult) -> float:
    """Offline throughput: work per unit JCT (turns / JCT)."""
    return result.turns_per_s


def check_offline(results: dict[str, RunResult], targets: FidelityTargets) -> list[Check]:
    """Checks that apply to the policies present in `results` (keyed by policy name)."""
    checks: list[Check] = []
    paper = results.get("paper")
    basic = results.get(BASELINE)
    oracle = results.get(ORACLE)
    if paper and basic:
        ratio = throughput(paper) / throughput(basic)
        lo, hi = targets.ratio_to_basic
        checks.append(
            Check(
                "paper / Basic throughput", ratio, f"in [{lo:g}, {hi:g}]", lo <= ratio <= hi, "1.87"
            )
        )
    if paper and oracle:
        frac = throughput(paper) / throughput(oracle)
        checks.append(
            Check(
                "paper / Oracle throughput",
                frac,
                f">= {targets.min_fraction_of_oracle:.3f}",
                frac >= targets.min_fraction_of_oracle,
                "close to Oracle",
            )
        )
    if paper:
        bal = paper.snic_read_max_over_avg
        checks.append(
            Check(
                "paper SNIC max/avg",
                bal,
                f"<= {targets.paper_max_over_avg:g}",
                bal <= targets.paper_max_over_avg,
                "1.18",
            )
        )
    rr = results.get("round-robin")
    if rr:
        bal = rr.snic_read_max_over_avg
        checks.append(
            Check(
                "round-robin SNIC max/avg",
                bal,
                f">= {targets.round_robin_min_max_over_avg:g}",
                bal >= targets.round_robin_min_max_over_avg,
                "1.53",
            )
        )
    split = results.get("dualpath-split")
    if split:
        bal = split.snic_read_max_over_avg
        checks.append(
            Check(
                "dualpath-split SNIC max/avg",
                bal,
                f"<= {targets.split_max_over_avg:g}",
                bal <= targets.split_max_over_avg,
                "(ours)",
            )
        )
        if paper:
            ratio = throughput(split) / throughput(paper)
            checks.append(
                Check("dualpath-split / paper throughput", ratio, ">= 1", ratio >= 1.0, "(ours)")
            )
    if oracle:
        worst = max(
            (throughput(r) / throughput(oracle) for p, r in results.items() if p != ORACLE),
            default=0.0,
        )
        checks.append(Check("best policy / Oracle", worst, "<= 1", worst <= 1.0 + 1e-9))
    return checks


def check_pd_sweep(
    pd: dict[str, dict[str, RunResult]], snic_bytes_per_s: float, tolerance: float
) -> list[Check]:
    """ "Throughput tracks total usable SNIC bandwidth" (paper §7, DS 27B P/D sweep): over the
    shapes where the paper policy is storage-bound (the Oracle, which has free I/O, is >= 10%
    faster), turns/s per GB/s of the cluster's total SNIC bandwidth is the same within
    `tolerance` (relative spread); Basic instead stays with the prefill nodes' bandwidth."""
    checks: list[Check] = []
    per_gbps = []
    basic_per_prefill = []
    for runs in pd.values():
        paper, oracle, basic = runs.get("paper"), runs.get(ORACLE), runs.get(BASELINE)
        if paper is None:
            continue
        total_gbps = len(paper.nodes) * snic_bytes_per_s / 1e9
        if oracle is not None and throughput(oracle) >= 1.1 * throughput(paper):
            per_gbps.append(throughput(paper) / total_gbps)
        if basic is not None and throughput(basic) < 0.9 * throughput(paper):
            prefill_gbps = (
                sum(1 for n in basic.nodes if n.role == "prefill") * snic_bytes_per_s / 1e9
            )
            basic_per_prefill.append(throughput(basic) / prefill_gbps)
    for name, values in (
        ("paper turns/s per total SNIC GB/s (storage-bound shapes)", per_gbps),
        ("Basic turns/s per prefill SNIC GB/s (storage-bound shapes)", basic_per_prefill),
    ):
        if len(values) >= 2:
            spread = (max(values) - min(values)) / (sum(values) / len(values))
            checks.append(
                Check(
                    f"{name}: relative spread over {len(values)} shapes",
                    spread,
                    f"<= {tolerance:g}",
                    spread <= tolerance,
                    "tracks SNIC bandwidth",
                )
            )
    return checks
