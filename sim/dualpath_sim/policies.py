"""The policies a simulation can run: the traffic controller's real policy core, by name,
plus the Oracle (the paper's scheduler on a cluster whose KV I/O costs nothing)."""

from __future__ import annotations

from typing import Any

from dualpath_controller.policy import (
    Policy,
    alpha_for,
    beta_for,
    describe_policies,
    get_policy,
    policy_names,
)

from dualpath_sim import constants as C
from dualpath_sim.compute import prefill_tokens_per_s
from dualpath_sim.config import ORACLE, SimConfig

# The paper's names for the comparison: Basic = prefill-only.
DISPLAY_NAMES = {
    "prefill-only": "Basic (prefill-only)",
    "round-robin": "round-robin",
    "paper": "DualPath (paper)",
    "dualpath-split": "dualpath-split (ours)",
    ORACLE: "Oracle (no I/O cost)",
}
BASELINE = "prefill-only"
# The Oracle runs this core policy with free I/O.
ORACLE_CORE_POLICY = "paper"


def sim_policy_names() -> list[str]:
    return [*policy_names(), ORACLE]


def default_order() -> list[str]:
    """Baseline first, Oracle last (table order)."""
    names = [n for n in sim_policy_names() if n not in (BASELINE, ORACLE)]
    return [BASELINE, *names, ORACLE]


def derived_params(config: SimConfig) -> dict[str, float]:
    """The paper defines alpha and beta by rates (§6); compute them for this cluster/model."""
    stats = config.workload.stats
    bpt = config.kv_bytes_per_token
    prompt = int(stats.mean_context)
    new = int(stats.append_tokens)
    rate = prefill_tokens_per_s(config.profile, prompt, new)
    return {
        "alpha": alpha_for(config.hardware.snic_read_bytes_per_s, bpt, C.ALPHA_SECONDS),
        "beta": beta_for(rate, C.BETA_SECONDS),
        "default_snic_bytes_per_s": config.hardware.snic_read_bytes_per_s,
    }


def build_policy(config: SimConfig) -> tuple[Policy, bool]:
    """(policy instance, io_free) for a config. Unknown names raise ValueError listing the
    known ones; parameters go through the core's own validation."""
    name = config.policy
    if name not in sim_policy_names():
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sim_policy_names())}")
    core = ORACLE_CORE_POLICY if name == ORACLE else name
    accepted = describe_policies()[core]
    params: dict[str, Any] = {k: v for k, v in derived_params(config).items() if k in accepted}
    params.update(config.policy_params)
    return get_policy(core, **params), name == ORACLE
