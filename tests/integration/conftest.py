"""Integration-tier hooks: the fuzz tests' tally of cases run, in the terminal summary."""

from __future__ import annotations

from typing import Any

from tests.support.fuzz import TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLY.total():
        terminalreporter.section("fuzz cases")
        for line in TALLY.lines():
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"fuzz total: {TALLY.total()} cases")
