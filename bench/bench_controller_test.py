"""`make bench` entry for the traffic controller benchmark (a short run of
bench/bench_controller.py; run that script directly for the full numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_controller


@pytest.mark.bench
def test_controller_decision_speed(tmp_path: Path) -> None:
    out = tmp_path / "controller.json"
    assert bench_controller.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for row in results["in_process"]:
        # Issue 4 target: >= 20,000 decisions/s in-process on one core at 1,152 engines.
        assert row["decisions_per_s"] >= 20_000, row
    open_loop = results["grpc"]["open_loop"]
    assert open_loop["answered"] == open_loop["sent"], open_loop["errors"]
    print(json.dumps(results, indent=2))
