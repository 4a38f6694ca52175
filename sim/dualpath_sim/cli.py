"""`dualpath sim`: run a preset experiment with the traffic controller's real policies.

dualpath sim --preset paper-ds660b-2p4d-64k [--policies paper,prefill-only]
             [--loads 500,2000] [--json out.json] [--plots out/] [--jobs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dualpath_common.logs import configure_logging
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dualpath_sim.experiment import run_experiment
from dualpath_sim.policies import default_order, sim_policy_names
from dualpath_sim.presets import PRESETS, get_preset
from dualpath_sim.runner import ProgressSink, Slo

log = logging.getLogger("dualpath_sim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="paper-ds660b-2p4d-64k",
        help="experiment to run (see --list-presets); default %(default)s",
    )
    parser.add_argument("--list-presets", action="store_true", help="list presets and exit")
    parser.add_argument(
        "--policies",
        help=f"comma-separated policies (default all: {','.join(default_order())})",
    )
    parser.add_argument(
        "--loads",
        help="comma-separated loads: agents (offline) or agents/s (online); the first one is "
        "the headline row. Default: the preset's",
    )
    parser.add_argument("--agents", type=int, help="offline: run this many agents only")
    parser.add_argument("--rate", type=float, help="online: run this arrival rate only")
    parser.add_argument(
        "--think-time", type=float, help="mean think time between an agent's turns, s"
    )
    parser.add_argument("--seed", type=int, help="trace and arrival seed")
    parser.add_argument("--trajectories", type=int, help="trajectories in the trace")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default %(default)s)",
    )
    parser.add_argument(
        "--slo-percentile",
        type=int,
        default=90,
        choices=(50, 90, 99),
        help="online: percentile of turns that must meet TTFT/TPOT SLOs (default 90)",
    )
    parser.add_argument(
        "--no-capacity", action="store_true", help="online: skip the capacity search"
    )
    parser.add_argument(
        "--policy-param",
        action="append",
        default=[],
        metavar="POLICY:NAME=VALUE",
        help="override a policy parameter, e.g. paper:z=1.1 (repeatable)",
    )
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a fidelity target of the preset is missed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _policies(raw: str | None) -> list[str]:
    if not raw:
        return default_order()
    names = [p.strip() for p in raw.split(",") if p.strip()]
    known = sim_policy_names()
    for name in names:
        if name not in known:
            raise ValueError(f"--policies: unknown policy {name!r} (known: {', '.join(known)})")
    return names


def _loads(args: argparse.Namespace, online: bool) -> list[float] | None:
    if args.agents is not None:
        if online:
            raise ValueError("--agents applies to offline presets; use --rate for online ones")
        if args.agents <= 0:
            raise ValueError(f"--agents must be > 0, got {args.agents}")
        return [float(args.agents)]
    if args.rate is not None:
        if not online:
            raise ValueError("--rate applies to online presets; use --agents for offline ones")
        if args.rate <= 0:
            raise ValueError(f"--rate must be > 0, got {args.rate}")
        return [args.rate]
    if args.loads:
        try:
            values = [float(x) for x in args.loads.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--loads must be comma-separated numbers, got {args.loads!r}"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"--loads must be positive numbers, got {args.loads!r}")
        return values
    return None


def _policy_params(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        policy, sep, rest = item.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or not policy or not name:
            raise ValueError(f"--policy-param {item!r} must look like POLICY:NAME=VALUE")
        out.setdefault(policy.strip(), {})[name.strip()] = value.strip()
    return out


class _Progress:
    """Rich progress bars on a terminal; otherwise a structured (JSON) log line per quarter
    of each run."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.bar: Progress | None = None
        self.tasks: dict[str, int] = {}
        self.logged: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        if self.enabled and not self.tty:
            configure_logging("sim")  # JSON lines on stderr
        if self.enabled and self.tty:
            self.bar = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def sink(self) -> ProgressSink | None:
        if not self.enabled:
            return None
        return self.update

    def update(self, key: str, fraction: float) -> None:
        if self.bar is not None:
            if key not in self.tasks:
                self.tasks[key] = self.bar.add_task(key, total=1.0)
            self.bar.update(self.tasks[key], completed=min(1.0, fraction))  # type: ignore[arg-type]
            return
        quarter = int(min(1.0, fraction) * 4)
        if quarter > self.logged.get(key, -1):
            self.logged[key] = quarter
            log.info("simulation progress", extra={"run": key, "percent": quarter * 25})


def run(args: argparse.Namespace) -> int:
    # Wide tables: a pipe or file gets 150 columns instead of rich's default 80.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    if args.list_presets:
        for name, preset in PRESETS.items():
            console.print(f"[bold]{name}[/bold]: {preset.description}")
        return 0
    try:
        preset = get_preset(args.preset)
        policies = _policies(args.policies)
        online = preset.config.workload.mode == "online"
        loads = _loads(args, online)
        params = _policy_params(args.policy_param)
        config = preset.config
        changes: dict[str, object] = {}
        if args.think_time is not None:
            changes["think_time_s"] = args.think_time
        if args.seed is not None:
            changes["seed"] = args.seed
        if args.trajectories is not None:
            changes["trajectories"] = args.trajectories
        if changes:
            config = config.with_workload(**changes)
        if args.jobs <= 0:
            raise ValueError(f"--jobs must be > 0, got {args.jobs}")
        for policy in params:
            if policy not in policies:
                raise ValueError(f"--policy-param names {policy!r}, which is not being run")
    except ValueError as exc:
        print(f"dualpath sim: {exc}", file=sys.stderr)
        return 2
    with _Progress(not args.quiet) as progress:
        try:
            exp = run_experiment(
                preset,
                policies,
                loads,
                jobs=args.jobs,
                progress=progress.sink(),
                slo=Slo(percentile=args.slo_percentile),
                capacity=not args.no_capacity,
                base=config,
                policy_params=params,
            )
        except ValueError as exc:
            print(f"dualpath sim: {exc}", file=sys.stderr)
            return 2
    from dualpath_sim.report import print_report, write_json

    print_report(exp, console)
    if args.json:
        write_json(exp, Path(args.json))
        console.print(f"wrote {args.json}")
    if args.plots:
        from dualpath_sim.plots import write_plots

        for path in write_plots(exp, Path(args.plots)):
            console.print(f"wrote {path}")
    if args.check and not all(c.ok for c in exp.checks):
        return 1
    return 0
