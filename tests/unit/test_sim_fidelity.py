"""The paper's evaluation targets, on the reduced preset (same per-GPU bottlenecks as
paper-ds660b-2p4d-64k with 2 GPUs per node and 40-turn windows; runs in seconds)."""

from __future__ import annotations

import dataclasses

import pytest
from dualpath_sim.experiment import Experiment, run_experiment
from dualpath_sim.fidelity import Check
from dualpath_sim.policies import default_order
from dualpath_sim.presets import get_preset
from dualpath_sim.runner import Slo

PRESET = "mini-ds660b-2p4d-64k"


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    preset = get_preset(PRESET)
    return run_experiment(preset, default_order(), [preset.loads[0]], jobs=1)


def _check(exp: Experiment, name: str) -> Check:
    matches = [c for c in exp.checks if c.name == name]
    assert matches, f"no check named {name!r}: {[c.name for c in exp.checks]}"
    return matches[0]


@pytest.mark.parametrize(
    "name",
    [
        "paper / Basic throughput",  # 1.6..2.1 (paper 1.87)
        "paper / Oracle throughput",  # within 15% of the Oracle
        "paper SNIC max/avg",  # <= 1.25 (paper 1.18)
        "round-robin SNIC max/avg",  # >= 1.4 (paper 1.53)
        "dualpath-split / paper throughput",  # ours >= paper
        "best policy / Oracle",  # the Oracle bounds everyone
    ],
)
def test_fidelity_target(experiment: Experiment, name: str) -> None:
    check = _check(experiment, name)
    assert check.ok, f"{name} = {check.value:.3f}, target {check.target}"


def test_split_balance_target(experiment: Experiment) -> None:
    check = _check(experiment, "dualpath-split SNIC max/avg")
    assert check.ok, f"dualpath-split SNIC max/avg = {check.value:.3f}, target <= 1.10"


def test_basic_saturates_prefill_snics_only(experiment: Experiment) -> None:
    basic = experiment.main()["prefill-only"]
    prefill = [n for n in basic.nodes if n.role == "prefill"]
    decode = [n for n in basic.nodes if n.role == "decode"]
    assert min(n.read_utilisation for n in prefill) > 0.9
    assert all(n.read_bytes == 0 for n in decode)


def test_online_capacity_orders_policies() -> None:
    preset = dataclasses.replace(get_preset("mini-ds660b-2p4d-64k-online"), capacity_steps=2)
    base = preset.config.with_workload(horizon_s=450.0, warmup_s=100.0)
    exp = run_experiment(
        preset,
        ["prefill-only", "paper"],
        [0.2, 0.9],
        slo=Slo(percentile=90),
        base=base,
    )
    low = {p: exp.sweep[p][0.2] for p in exp.policies}
    high = {p: exp.sweep[p][0.9] for p in exp.policies}
    assert low["paper"].slo_ok
    assert not high["prefill-only"].slo_ok  # far beyond Basic's storage bandwidth
    assert exp.capacity["paper"].capacity > 1.5 * exp.capacity["prefill-only"].capacity


def test_pd_sweep_tracks_storage_bandwidth() -> None:
    exp = run_experiment(get_preset("mini-ds27b-pd-sweep"), ["prefill-only", "paper", "oracle"])
    tracking = [c for c in exp.checks if "per total SNIC" in c.name or "per prefill SNIC" in c.name]
    assert len(tracking) == 2
    for check in tracking:
        assert check.ok, f"{check.name} = {check.value:.3f}, target {check.target}"
    paper = [exp.pd[shape]["paper"].turns_per_s for shape in ("1P1D", "1P2D", "1P3D")]
    basic = [exp.pd[shape]["prefill-only"].turns_per_s for shape in ("1P1D", "1P2D", "1P3D")]
    # More decode nodes = more storage NICs: DualPath grows with them, Basic cannot use them.
    assert paper[0] < paper[1] < paper[2]
    assert max(basic) < 1.05 * min(basic)
