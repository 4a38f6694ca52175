"""`dualpath demo`: the main job. A local DualPath stack (traffic controller + one agent per
node, real processes on loopback, real bytes) plays an agentic workload under the
prefill-only baseline and the DualPath policies, and shows the gain. See dualpath_local."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULTS_NOTE = (
    "Defaults: 1 prefill + 2 decode nodes, a 0.48 Gbit/s (60 MB/s) storage-NIC read cap per "
    "node, 24 agents x 5 turns of the paper's 32K trace scaled to 1/4, model tiny-test."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dualpath_common.models import MODEL_PRESETS
    from dualpath_local.runner import DEFAULT_POLICIES

    parser.description = DEFAULTS_NOTE
    g = parser.add_argument_group("cluster")
    g.add_argument("--prefill-nodes", type=int, default=1)
    g.add_argument("--decode-nodes", type=int, default=2)
    g.add_argument(
        "--snic-read-gbps",
        type=float,
        default=0.48,
        help="storage-NIC read cap per node, Gbit/s (8 = 1 GB/s); default 0.48 = 60 MB/s, "
        "low enough that this machine's disk and CPUs are never the bottleneck",
    )
    g.add_argument("--transport", choices=["auto", "nixl", "fallback"], default="auto")
    g.add_argument("--workdir", type=Path, help="stores and logs here (default: a temp dir)")
    g.add_argument(
        "--keep", action="store_true", help="leave the stack up afterwards, print its endpoints"
    )
    w = parser.add_argument_group("workload")
    w.add_argument("--model", choices=sorted(MODEL_PRESETS), default="tiny-test")
    w.add_argument("--trace", choices=["32k", "48k", "64k"], default="32k")
    w.add_argument(
        "--context-scale",
        type=float,
        default=0.25,
        help="multiply the trace's token counts by this (default 0.25)",
    )
    w.add_argument("--agents", type=int, default=24, help="agent trajectories played at once")
    w.add_argument("--turns", type=int, default=5, help="turns played per trajectory")
    w.add_argument("--block-tokens", type=int, default=64)
    w.add_argument("--seed", type=int, default=7)
    w.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help="comma-separated, run in this order (the speedup is over prefill-only)",
    )
    w.add_argument(
        "--prefill-tokens-per-s",
        type=float,
        default=20_000.0,
        help="modelled prefill speed of one engine (missed tokens/s)",
    )
    w.add_argument("--tpot-ms", type=float, default=10.0, help="modelled time per output token")
    w.add_argument(
        "--spot-check-every",
        type=int,
        default=24,
        help="read every Nth loaded region back and compare it byte for byte (0 = never)",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--json", type=Path, default=Path("out/demo/demo.json"), metavar="FILE")
    o.add_argument("--chart", type=Path, default=Path("out/demo/demo.png"), metavar="FILE")


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dualpath_local.driver import ComputeModel
    from dualpath_local.runner import DemoConfig
    from dualpath_local.workload import WorkloadConfig

    return DemoConfig(
        workload=WorkloadConfig(
            trace=args.trace,
            context_scale=args.context_scale,
            trajectories=args.agents,
            turns_per_trajectory=args.turns,
            block_tokens=args.block_tokens,
            model=args.model,
            seed=args.seed,
        ),
        prefill_nodes=args.prefill_nodes,
        decode_nodes=args.decode_nodes,
        snic_read_gbps=args.snic_read_gbps,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        compute=ComputeModel(args.prefill_tokens_per_s, args.tpot_ms / 1000),
        spot_check_every=args.spot_check_every,
        transport=args.transport,
        workdir=args.workdir,
        keep=args.keep,
        json_path=args.json,
        chart_path=args.chart,
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from dualpath_local.runner import DemoFailed, run_demo
    from rich.console import Console

    console = Console()
    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as exc:
        print(f"dualpath demo: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_demo(config, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the stack was stopped[/yellow]")
        return 130
    except ValueError as exc:  # the configuration does not fit this machine
        print(f"dualpath demo: {exc}", file=sys.stderr)
        return 2
    except DemoFailed as exc:
        print(
            f"dualpath demo failed: {exc}" + (f" (logs: {exc.workdir})" if exc.workdir else ""),
            file=sys.stderr,
        )
        return 1
    return 0 if result.ok else 1
