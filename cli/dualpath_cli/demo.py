"""`dualpath demo`: the main job. Placeholder until the local stack lands (issue 7)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    print("The local DualPath stack is not built yet; nothing was measured.")
    return 0
