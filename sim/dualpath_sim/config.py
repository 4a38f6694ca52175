"""What one simulation run is: model, hardware, workload, policy. Validated values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dualpath_common.models import get_model_preset

from dualpath_sim import constants as C
from dualpath_sim.hardware import HardwareSpec

MODES = ("offline", "online")
ORACLE = "oracle"


@dataclass(frozen=True)
class Workload:
    """Agents replaying trajectories of one trace.

    offline: `agents` agents all start at t=0; the run ends when the last one finishes (JCT).
    online: agents arrive as a Poisson process of `arrival_rate` agents/s for `horizon_s`
      seconds; latency is measured on turns issued after `warmup_s`. With `warm_start` the
      run begins with the population an endless Poisson stream would have (agents caught
      mid-trajectory, their earlier turns already in storage), so the warm-up can be short.
    turn_window: replay at most this many turns per agent (0 = whole trajectories); with
      `random_start` each agent starts at a random turn with its earlier context already in
      storage. Reduced presets use it to keep the trace's context lengths in fewer turns.
    """

    trace: str = "64k"
    trajectories: int = C.TRAJECTORIES_PER_TRACE
    mode: str = "offline"
    agents: int = 500
    arrival_rate: float = 0.0
    horizon_s: float = 1800.0
    warmup_s: float = 300.0
    warm_start: bool = True
    # Mean think time (tool calls) between an agent's turns; exponential. 0 = back to back
    # (the paper's offline runs assume no tool latency).
    think_time_s: float = 0.0
    turn_window: int = 0
    random_start: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trace not in C.TRACE_STATS:
            raise ValueError(
                f"workload.trace must be one of {', '.join(C.TRACE_STATS)}, got {self.trace!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"workload.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.trajectories <= 0:
            raise ValueError(f"workload.trajectories must be > 0, got {self.trajectories}")
        if self.mode == "offline" and self.agents <= 0:
            raise ValueError(f"workload.agents must be > 0, got {self.agents}")
        if self.mode == "online":
            if not self.arrival_rate > 0:
                raise ValueError(f"workload.arrival_rate must be > 0, got {self.arrival_rate}")
            if not self.horizon_s > self.warmup_s >= 0:
                raise ValueError(
                    f"workload.horizon_s ({self.horizon_s}) must exceed warmup_s ({self.warmup_s})"
                )
        if self.think_time_s < 0:
            raise ValueError(f"workload.think_time_s must be >= 0, got {self.think_time_s}")
        if self.turn_window < 0:
            raise ValueError(f"workload.turn_window must be >= 0, got {self.turn_window}")

    @property
    def stats(self) -> C.TraceStats:
        return C.TRACE_STATS[self.trace]


@dataclass(frozen=True)
class SimConfig:
    model: str
    hardware: HardwareSpec
    workload: Workload
    policy: str = "paper"
    policy_params: dict[str, Any] = field(default_factory=dict)
    # Width of the time bins of the SNIC utilisation series, seconds.
    bin_s: float = 10.0

    def __post_init__(self) -> None:
        get_model_preset(self.model)  # ValueError naming the known models
        if self.model not in C.COMPUTE_PROFILES:
            raise ValueError(
                f"model {self.model!r} has no compute profile (known: "
                f"{', '.join(C.COMPUTE_PROFILES)})"
            )
        if not self.bin_s > 0:
            raise ValueError(f"bin_s must be > 0, got {self.bin_s}")

    @property
    def profile(self) -> C.ComputeProfile:
        return C.COMPUTE_PROFILES[self.model]

    @property
    def kv_bytes_per_token(self) -> int:
        return get_model_preset(self.model).kv_bytes_per_token

    @property
    def layers(self) -> int:
        return get_model_preset(self.model).layers

    def with_policy(self, policy: str, **params: Any) -> SimConfig:
        return replace(self, policy=policy, policy_params=dict(params))

    def with_workload(self, **changes: Any) -> SimConfig:
        return replace(self, workload=replace(self.workload, **changes))
