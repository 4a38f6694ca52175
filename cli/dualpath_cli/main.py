"""`dualpath <command>`: each component contributes its subcommands.

A component module listed in COMMANDS exposes `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `dualpath --help` stays fast and a
broken optional component cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dualpath_cli.demo", "run the local DualPath stack with real bytes and show the gain"),
    "local": ("dualpath_local.cli", "local stack: `dualpath local up` keeps one running"),
    "controller": ("dualpath_controller.cli", "run the traffic controller gRPC server"),
    "agent": ("dualpath_agent.cli", "run a per-node KV agent"),
    "operator": ("dualpath_operator.cli", "run the DualPathCluster kopf operator"),
    "sim": ("dualpath_sim.cli", "simulate a cluster with the real scheduling policies"),
    "router": (
        "dualpath_router.cli",
        "OpenAI-compatible front door of prefill/decode vLLM engines",
    ),
    "picker": (
        "dualpath_router.picker.cli",
        "Gateway API Inference Extension endpoint picker (Envoy ext_proc) for the engines",
    ),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualpath", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
