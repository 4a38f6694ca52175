"""Aggregation of a phase (pure): turns/s, per-node storage reads and SNIC utilisation,
paths taken, verification counts; and the JSON document of the whole demo."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dualpath_local.driver import PhaseRun, TurnRecord
from dualpath_local.engines import NodeCounters

BASELINE = "prefill-only"


@dataclass(frozen=True)
class NodeResult:
    node: str
    role: str
    bytes_read: int
    reads: int
    read_bytes_per_s: float
    snic_cap_bytes_per_s: float
    utilisation: float
    checksum_failures: int


@dataclass
class PhaseResult:
    policy: str
    turns: int
    turns_expected: int
    wall_s: float
    turns_per_s: float
    nodes: list[NodeResult]
    paths: dict[str, int]
    bytes_loaded: int
    bytes_from_peer: int
    blocks_expected: int
    blocks_verified: int
    checksum_failures: int
    spot_checks: int
    spot_check_failures: int
    placement_mismatches: int
    turn_s_p50: float
    turn_s_p90: float
    load_s_p50: float
    load_s_p90: float
    errors: list[str] = field(default_factory=list)
    speedup: float | None = None
    # CPU cores the stack used on average (all its processes), and the machine's load.
    stack_cpu_cores: float = 0.0
    loadavg_1m: float = 0.0
    # (seconds since the phase started, bytes/s read from storage by all nodes together)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    # Faults survived: turn attempts played again, loads whose decode-side part the
    # prefill agent read itself, agent failures told to the controller, processes the
    # supervisor started again, and per chaos event when it hit, how long the process was
    # down, the throughput dip and the time to recover.
    retries: int = 0
    fallbacks: int = 0
    failures_reported: int = 0
    restarts: int = 0
    chaos: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and self.turns == self.turns_expected
            and self.checksum_failures == 0
            and self.spot_check_failures == 0
            and self.blocks_verified == self.blocks_expected
        )

    @property
    def read_bytes_per_s(self) -> float:
        return sum(n.read_bytes_per_s for n in self.nodes)

    @property
    def de_read_share(self) -> float:
        """Share of the loaded bytes that came through the decode nodes' SNICs."""
        return self.bytes_from_peer / self.bytes_loaded if self.bytes_loaded else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def node_results(
    before: Mapping[str, NodeCounters],
    after: Mapping[str, NodeCounters],
    roles: Mapping[str, str],
    caps: Mapping[str, float],
    wall_s: float,
) -> list[NodeResult]:
    out = []
    for node in before:
        b, a = before[node], after[node]
        nbytes = a.storage_bytes_read - b.storage_bytes_read
        rate = nbytes / wall_s if wall_s > 0 else 0.0
        cap = caps[node]
        out.append(
            NodeResult(
                node=node,
                role=roles[node],
                bytes_read=nbytes,
                reads=a.storage_reads - b.storage_reads,
                read_bytes_per_s=rate,
                snic_cap_bytes_per_s=cap,
                utilisation=rate / cap if cap > 0 else 0.0,
                checksum_failures=a.checksum_failures - b.checksum_failures,
            )
        )
    return out


def summarize_phase(
    run: PhaseRun,
    turns_expected: int,
    nodes: list[NodeResult],
    timeline: list[tuple[float, float]],
) -> PhaseResult:
    records: list[TurnRecord] = list(run.records)
    wall = max(run.finished - run.started, 1e-9)
    return PhaseResult(
        policy=run.policy,
        turns=len(records),
        turns_expected=turns_expected,
        wall_s=wall,
        turns_per_s=len(records) / wall,
        nodes=nodes,
        paths=dict(Counter(r.path for r in records)),
        bytes_loaded=sum(r.bytes_loaded for r in records),
        bytes_from_peer=sum(r.bytes_from_peer for r in records),
        blocks_expected=sum(r.blocks_expected for r in records),
        blocks_verified=sum(r.blocks_verified for r in records),
        checksum_failures=sum(n.checksum_failures for n in nodes),
        spot_checks=run.spot_checks,
        spot_check_failures=run.spot_check_failures,
        placement_mismatches=run.placement_mismatches,
        turn_s_p50=percentile([r.turn_s for r in records], 0.5),
        turn_s_p90=percentile([r.turn_s for r in records], 0.9),
        load_s_p50=percentile([r.load_s for r in records], 0.5),
        load_s_p90=percentile([r.load_s for r in records], 0.9),
        errors=list(run.errors),
        timeline=timeline,
        retries=run.retries,
        fallbacks=run.fallbacks,
        failures_reported=run.failures_reported,
    )


def add_speedups(results: list[PhaseResult]) -> None:
    """Speedup of turns/s over the prefill-only phase (None when it did not run)."""
    base = next((r for r in results if r.policy == BASELINE), None)
    for r in results:
        r.speedup = r.turns_per_s / base.turns_per_s if base and base.turns_per_s else None


def rate_timeline(
    samples: Sequence[tuple[float, int]], start: float, step_s: float = 0.5, window_s: float = 2.0
) -> list[tuple[float, float]]:
    """(t, bytes/s) from cumulative (time, bytes) samples: one point per `step_s`, each the
    average over the last `window_s` (reads complete in chunks, so shorter windows flicker)."""
    points: list[tuple[float, float]] = []
    next_t = None
    for i, (t, b) in enumerate(samples):
        if next_t is None:
            next_t = t + step_s
            continue
        if t < next_t:
            continue
        next_t = t + step_s
        j = i
        while j > 0 and samples[j - 1][0] >= t - window_s:
            j -= 1
        t0, b0 = samples[j]
        if t > t0:
            points.append((round(t - start, 3), (b - b0) / (t - t0)))
    return points


def phase_json(r: PhaseResult) -> dict[str, Any]:
    doc = asdict(r)
    doc["read_bytes_per_s"] = r.read_bytes_per_s
    doc["de_read_share"] = r.de_read_share
    doc["ok"] = r.ok
    return doc
