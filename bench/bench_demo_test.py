"""`make bench` entry for the local stack benchmark (bench/bench_demo.py --quick)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_demo


@pytest.mark.bench
def test_snic_cap_is_the_bottleneck_at_the_demo_default(tmp_path: Path) -> None:
    out = tmp_path / "demo-bench.json"
    assert bench_demo.main(["--quick", "--json", str(out)]) == 0
    rows = {r["snic_read_gbps"]: r for r in json.loads(out.read_text())["rows"]}
    default = rows[0.48]
    # Issue 7: dualpath-split >= 1.8x prefill-only with 1P2D at the default cap, where the
    # baseline's single SNIC is saturated (not the CPUs).
    assert default["dualpath-split"]["speedup"] >= 1.8, default
    assert default["prefill-only"]["snic_utilisation"]["prefill-0"] > 0.85, default
    for row in rows.values():
        for policy in bench_demo.POLICIES:
            assert row[policy]["checksum_failures"] == 0
    print(json.dumps(rows, indent=2))
