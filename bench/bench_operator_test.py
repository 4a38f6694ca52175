"""`make bench` entry for the operator benchmark (a short run of bench/bench_operator.py;
run that script directly for the 1- and 50-cluster numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_operator


@pytest.mark.bench
def test_operator_create_to_children_and_status(tmp_path: Path) -> None:
    out = tmp_path / "operator.json"
    assert bench_operator.main(["--counts", "1,10", "--json", str(out)]) == 0
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["clusters"] for r in rounds] == [1, 10]
    for row in rounds:
        assert row["children_present"]["max_s"] <= row["makespan_children_s"] + 1e-3
        # Level-based reconciles: about one per cluster, never a storm.
        assert row["reconciles"] <= 3 * row["clusters"] + 2, row
    print(json.dumps(rounds, indent=2))
