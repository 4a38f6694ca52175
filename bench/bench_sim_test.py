"""`make bench` entry for the simulator speed targets (bench/bench_sim.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sim


@pytest.mark.bench
def test_2p4d_500_agents_under_a_minute_per_policy() -> None:
    rows = bench_sim.run_case(bench_sim.CASES["2p4d-500"])
    assert len(rows) == 5
    assert all(float(r["turns"]) > 75_000 for r in rows)
    slow = [r for r in rows if not r["ok"]]
    assert not slow, slow


@pytest.mark.bench
def test_48p96d_under_ten_minutes() -> None:
    rows = bench_sim.run_case(bench_sim.CASES["48p96d-12000"])
    assert rows and all(r["ok"] for r in rows), rows
