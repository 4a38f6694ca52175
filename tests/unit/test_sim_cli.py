"""`dualpath sim` end to end: table, JSON, readable PNGs, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
from dualpath_cli.main import main


def test_sim_cli_writes_table_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    plots = tmp_path / "plots"
    code = main(
        [
            "sim",
            "--preset",
            "mini-ds660b-2p4d-64k",
            "--policies",
            "prefill-only,paper,oracle",
            "--loads",
            "60,30",
            "--json",
            str(out),
            "--plots",
            str(plots),
            "--jobs",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "DualPath (paper)" in printed and "JCT s" in printed
    data = json.loads(out.read_text())
    assert data["preset"] == "mini-ds660b-2p4d-64k"
    assert set(data["headline"]) == {"prefill-only", "paper", "oracle"}
    paper = data["headline"]["paper"]
    assert paper["agents"] == 60 and paper["turns_completed"] > 0
    assert paper["invariants"]["read_bytes_links"] == paper["invariants"]["read_bytes_requests"]
    assert set(data["sweep"]["paper"]) == {"60.0", "30.0"}
    assert data["trace"]["trajectories"] == 500
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == [
        "mini-ds660b-2p4d-64k-snic-utilisation.png",
        "mini-ds660b-2p4d-64k-throughput-vs-load.png",
    ]
    for png in plots.glob("*.png"):
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "paper,fastest"], "--policies: unknown policy 'fastest'"),
        (["--agents", "0"], "--agents must be > 0"),
        (["--rate", "1"], "--rate applies to online presets"),
        (["--loads", "a,b"], "--loads must be comma-separated numbers"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--policy-param", "paper:z"], "POLICY:NAME=VALUE"),
        (["--policies", "paper", "--policy-param", "paper:z=99", "--agents", "5"], "'z'"),
    ],
)
def test_sim_cli_rejects_bad_input(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["sim", "--quiet", "--jobs", "1"]
    if "--preset" not in args:
        base += ["--preset", "mini-ds660b-2p4d-64k"]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err


def test_sim_cli_lists_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert "paper-ds660b-2p4d-64k" in listed and "paper-ds660b-48p96d-64k" in listed
