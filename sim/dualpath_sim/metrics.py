"""Results of one run, and the summary numbers computed from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LatencySummary:
    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0

    @staticmethod
    def of(values: list[float]) -> LatencySummary:
        if not values:
            return LatencySummary()
        arr = np.asarray(values, dtype=float)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return LatencySummary(len(values), float(arr.mean()), float(p50), float(p90), float(p99))

    def percentile(self, which: int) -> float:
        return {50: self.p50, 90: self.p90, 99: self.p99}[which]


@dataclass
class NodeUsage:
    node: str
    role: str
    read_bytes: int
    write_bytes: int
    # Fraction of the run the SNIC read direction was busy.
    read_utilisation: float
    # Read bytes inside the run's loaded window (RunResult.loaded_window).
    read_bytes_loaded: int = 0
    # Read bytes per time bin divided by what the SNIC could read in the bin (0..1).
    read_series: list[float] = field(default_factory=list)


@dataclass
class Invariants:
    """Numbers the tests pin (they can only come out right if the model is consistent)."""

    read_bytes_links: int = 0
    read_bytes_requests: int = 0
    write_bytes_links: int = 0
    write_bytes_requests: int = 0
    # Highest HBM booking seen on any decode engine, as a fraction of its capacity.
    max_de_hbm_fraction: float = 0.0
    # Largest prefill batch compute seen, seconds (quota is 0.3 s plus one chunk's rounding).
    max_prefill_batch_s: float = 0.0
    events: int = 0
    schedule_calls: int = 0
    no_capacity: int = 0


@dataclass
class RunResult:
    policy: str
    label: str
    mode: str
    model: str
    cluster: str
    agents: int
    arrival_rate: float
    # Offline: time the last agent finished (JCT). Online: the measurement window's length.
    makespan_s: float
    # Offline: all turns. Online: turns completed inside the measurement window.
    turns_completed: int
    agents_completed: int
    output_tokens: int
    prompt_tokens: int
    computed_tokens: int
    ttft: LatencySummary
    tpot: LatencySummary
    ttst: LatencySummary
    nodes: list[NodeUsage]
    bin_s: float
    # (start, end) of the part of the run where the cluster is loaded: offline until 90% of
    # the turns are done (afterwards a few long trajectories drain an idle cluster), online
    # the measurement window. Balance is judged there.
    loaded_window: tuple[float, float]
    invariants: Invariants
    # Online: did the measured turns meet the SLO at the chosen percentile.
    slo_ok: bool = True
    slo_detail: str = ""
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def turns_per_s(self) -> float:
        return self.turns_completed / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def snic_read_max_over_avg(self) -> float:
        """Balance of storage reads across all nodes while the cluster is loaded: max / mean
        of per-node read bytes in the loaded window (0 when nothing was read)."""
        return _max_over_mean([n.read_bytes_loaded for n in self.nodes])

    @property
    def snic_read_max_over_avg_total(self) -> float:
        """The same over the whole run, drain included."""
        return _max_over_mean([n.read_bytes for n in self.nodes])

    @property
    def snic_read_utilisation_avg(self) -> float:
        if not self.nodes:
            return 0.0
        return sum(n.read_utilisation for n in self.nodes) / len(self.nodes)

    @property
    def snic_read_utilisation_max(self) -> float:
        return max((n.read_utilisation for n in self.nodes), default=0.0)

    def as_dict(self, series: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not series:
            for node in out["nodes"]:
                node.pop("read_series", None)
        out["turns_per_s"] = self.turns_per_s
        out["output_tokens_per_s"] = self.output_tokens_per_s
        out["snic_read_max_over_avg"] = self.snic_read_max_over_avg
        out["snic_read_max_over_avg_total"] = self.snic_read_max_over_avg_total
        out["snic_read_utilisation_avg"] = self.snic_read_utilisation_avg
        out["snic_read_utilisation_max"] = self.snic_read_utilisation_max
        return out


def _max_over_mean(values: list[int]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else 0.0
