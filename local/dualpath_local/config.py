"""What a stand-in demo run is asked to do (`DemoConfig`) and how big its agents' buffers
must be for the workload (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dualpath_local.chaos import ChaosEvent
from dualpath_local.driver import ComputeModel
from dualpath_local.workload import Workload, WorkloadConfig

DEFAULT_POLICIES = ("prefill-only", "paper", "dualpath-split")
MiB = 1 << 20


@dataclass(frozen=True)
class DemoConfig:
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    prefill_nodes: int = 1
    decode_nodes: int = 2
    # Storage-NIC read cap per node. Low enough that this machine's disk and CPUs are never
    # the bottleneck, so the demo shows what DualPath changes: whose SNIC does the reading.
    snic_read_gbps: float = 0.48
    policies: tuple[str, ...] = DEFAULT_POLICIES
    compute: ComputeModel = field(default_factory=ComputeModel)
    spot_check_every: int = 24
    transport: str = "auto"
    workdir: Path | None = None
    keep: bool = False
    # The controller's policy when the stack is kept up without running any phase.
    up_policy: str = "dualpath-split"
    json_path: Path | None = Path("out/demo/demo.json")
    chart_path: Path | None = Path("out/demo/demo.png")
    # Kills and restarts applied during every phase (dualpath_local.chaos).
    chaos: tuple[ChaosEvent, ...] = ()

    @property
    def snic_read_bytes_per_s(self) -> float:
        return self.snic_read_gbps * 1e9 / 8

    def validate(self) -> None:
        self.workload.validate()
        if not 0 < self.snic_read_gbps <= 400:
            raise ValueError(f"snic_read_gbps must be in (0, 400], got {self.snic_read_gbps}")
        if self.prefill_nodes < 1 or self.decode_nodes < 1:
            raise ValueError("prefill_nodes and decode_nodes must be >= 1")
        from dualpath_controller.policy import policy_names

        for p in (*self.policies, self.up_policy):
            if p not in policy_names():
                raise ValueError(f"unknown policy {p!r} (known: {', '.join(policy_names())})")


# ----- sizing (pure) -------------------------------------------------------------------------
def buffer_sizes(workload: Workload) -> tuple[int, int]:
    """(host buffer, device tier) bytes per agent: the device tier holds every trajectory's
    largest prompt at once (loads queue on the SNIC, not on memory); the host buffer stages
    a few reads in flight."""
    kv = workload.config.preset.kv_bytes_per_token
    largest = [
        max(t.prompt_tokens + t.output_tokens for t in plan.turns) * kv
        for plan in workload.trajectories
    ]
    device = sum(largest) + 16 * MiB
    host = max(64 * MiB, 6 * max(largest))
    return _round_mib(host), _round_mib(device)


def check_memory(needed: int) -> None:
    """Refuse a workload whose agents' buffers could not fit in this machine's memory."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
            if needed > 0.8 * available:
                raise ValueError(
                    f"the agents' buffers would need {needed / 2**30:.1f} GiB "
                    f"({available / 2**30:.1f} GiB available): reduce --agents, "
                    "--context-scale or the node counts"
                )
            return


def _round_mib(n: int) -> int:
    return math.ceil(n / MiB) * MiB


# ----- the job ------------------------------------------------------------------------------
