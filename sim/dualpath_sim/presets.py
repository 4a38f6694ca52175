"""Named experiments: the paper's evaluation points, a P/D sweep, and small test presets."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualpath_sim import constants as C
from dualpath_sim.config import SimConfig, Workload
from dualpath_sim.hardware import HardwareSpec


@dataclass(frozen=True)
class FidelityTargets:
    """What the run must show (issue 6 / paper §7); checked by `fidelity.check`."""

    ratio_to_basic: tuple[float, float] = (1.6, 2.1)
    # paper-policy throughput >= this fraction of the Oracle's.
    min_fraction_of_oracle: float = 1 / 1.15
    paper_max_over_avg: float = 1.25
    round_robin_min_max_over_avg: float = 1.4
    split_max_over_avg: float = 1.10


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: SimConfig
    # Offline: agent counts; online: agents/s. The first is the headline (table) load.
    loads: tuple[float, ...]
    # Other cluster shapes to run (P/D sweep), as (prefill_nodes, decode_nodes).
    pd_sweep: tuple[tuple[int, int], ...] = ()
    targets: FidelityTargets | None = None
    # Online capacity search: bisection steps and the bracket (agents/s).
    capacity_bracket: tuple[float, float] = (0.05, 2.0)
    capacity_steps: int = 6
    # P/D sweep: relative spread allowed in throughput per GB/s of SNIC (fidelity check).
    pd_tracking_tolerance: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def config_for_load(self, load: float) -> SimConfig:
        wl = self.config.workload
        if wl.mode == "offline":
            return self.config.with_workload(agents=int(load))
        return self.config.with_workload(arrival_rate=float(load))


def _ds660b(p: int, d: int, trace: str, agents: int, **wl: object) -> SimConfig:
    return SimConfig(
        "deepseek-v3.2-660b",
        HardwareSpec(p, d),
        Workload(trace=trace, agents=agents, **wl),  # type: ignore[arg-type]
    )


def _small_hardware(p: int, d: int, gpus: int) -> HardwareSpec:
    """Fewer GPUs per node, with the storage NIC scaled so each GPU keeps its paper share:
    the same bottlenecks as the full-size cluster, at a fraction of the simulation cost."""
    share = gpus / C.GPUS_PER_NODE
    return HardwareSpec(
        p,
        d,
        gpus_per_node=gpus,
        snic_read_bytes_per_s=C.SNIC_READ_BYTES_PER_S * share,
        snic_write_bytes_per_s=C.SNIC_WRITE_BYTES_PER_S * share,
        dram_bytes_per_s=C.DRAM_BYTES_PER_S * share,
    )


def _build() -> dict[str, Preset]:
    presets = [
        Preset(
            "paper-ds660b-2p4d-64k",
            "DS 660B, 2P4D, 64K trace, offline, 2,000 agents (paper Table 3: 3,167 s)",
            _ds660b(2, 4, "64k", 2000),
            loads=(2000, 500, 1000),
            targets=FidelityTargets(),
            notes=("2,000 agents replay the 500 trajectories four times each",),
        ),
        Preset(
            "paper-ds660b-2p4d-32k",
            "DS 660B, 2P4D, 32K trace, offline, 2,000 agents",
            _ds660b(2, 4, "32k", 2000),
            loads=(2000,),
        ),
        Preset(
            "paper-ds660b-2p4d-48k",
            "DS 660B, 2P4D, 48K trace, offline, 2,000 agents",
            _ds660b(2, 4, "48k", 2000),
            loads=(2000,),
        ),
        Preset(
            "paper-ds660b-48p96d-64k",
            "DS 660B, 48P96D (1,152 GPUs), 64K trace, offline, 48,000 agents (Table 3: 3,201 s)",
            _ds660b(48, 96, "64k", 48000),
            loads=(48000,),
        ),
        Preset(
            "paper-ds660b-2p4d-64k-online",
            "DS 660B, 2P4D, 64K trace, online (Poisson agents, TTFT<=4 s, TPOT<=50 ms)",
            _ds660b(
                2, 4, "64k", 1, mode="online", arrival_rate=0.4, horizon_s=1500.0, warmup_s=300.0
            ),
            loads=(0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
            capacity_bracket=(0.1, 1.2),
        ),
        Preset(
            "paper-ds27b-1p1d-64k",
            "DS 27B, 1P1D, 64K trace, offline, 1,000 agents",
            SimConfig("ds-27b", HardwareSpec(1, 1), Workload(trace="64k", agents=1000)),
            loads=(1000,),
            targets=None,
        ),
        Preset(
            "paper-ds27b-pd-sweep",
            "DS 27B, P/D ratio sweep, 64K trace, offline, 500 agents per node",
            SimConfig(
                "ds-27b",
                _small_hardware(1, 1, 8),
                Workload(trace="64k", agents=1000, turn_window=40, random_start=True),
            ),
            loads=(1000,),
            pd_sweep=((1, 1), (1, 2), (2, 1), (1, 3), (2, 2), (3, 1), (1, 4)),
            pd_tracking_tolerance=0.15,
            notes=("agents scale with nodes; each plays a 40-turn window of its trajectory",),
        ),
        Preset(
            "paper-qwen32b-1p2d-64k",
            "Qwen2.5-32B, 1P2D, 64K trace, offline, 300 agents",
            SimConfig("qwen2.5-32b", HardwareSpec(1, 2), Workload(trace="64k", agents=300)),
            loads=(300,),
        ),
        # Reduced presets: same per-GPU bottlenecks with 2 GPUs per node and 40-turn windows
        # (random starting turn, earlier context already stored), so they run in seconds.
        Preset(
            "mini-ds660b-2p4d-64k",
            "reduced paper-ds660b-2p4d-64k: 2 GPUs/node, 500 agents x 40-turn windows",
            SimConfig(
                "deepseek-v3.2-660b",
                _small_hardware(2, 4, 2),
                Workload(trace="64k", agents=500, turn_window=40, random_start=True),
                bin_s=5.0,
            ),
            loads=(500, 125, 250),
            targets=FidelityTargets(),
        ),
        Preset(
            "mini-ds27b-pd-sweep",
            "reduced paper-ds27b-pd-sweep: 2 GPUs/node, 125 agents per node, 30-turn windows",
            SimConfig(
                "ds-27b",
                _small_hardware(1, 1, 2),
                Workload(trace="64k", agents=250, turn_window=30, random_start=True),
                bin_s=5.0,
            ),
            loads=(250,),
            pd_sweep=((1, 1), (1, 2), (1, 3), (2, 1)),
            pd_tracking_tolerance=0.15,
        ),
        Preset(
            "mini-ds660b-2p4d-64k-online",
            "reduced online preset: 2 GPUs/node, 40-turn windows, short horizon",
            SimConfig(
                "deepseek-v3.2-660b",
                _small_hardware(2, 4, 2),
                Workload(
                    trace="64k",
                    mode="online",
                    arrival_rate=0.5,
                    horizon_s=700.0,
                    warmup_s=150.0,
                    turn_window=40,
                    random_start=True,
                ),
                bin_s=5.0,
            ),
            loads=(0.25, 0.5, 0.75, 1.0),
            capacity_bracket=(0.1, 2.0),
            capacity_steps=5,
        ),
    ]
    return {p.name: p for p in presets}


PRESETS: dict[str, Preset] = _build()


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
