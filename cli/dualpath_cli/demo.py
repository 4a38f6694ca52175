"""`dualpath demo`: the main job. A local DualPath stack (traffic controller + one agent per
node, real processes on loopback, real bytes) plays an agentic workload under the
prefill-only baseline and the DualPath policies, and shows the gain. See dualpath_local."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULTS_NOTE = (
    "Defaults (--engines vllm): 1 prefill + 2 decode nodes, each with an agent and a real vLLM "
    "engine (CPU) loading its KV cache through the DualPath connector, behind `dualpath "
    "router`; a 0.008 Gbit/s (1 MB/s) storage-NIC read cap per node (the prefill node's SNIC, not the CPUs, bounds the baseline); 16 agents x 3 turns of "
    "the paper's 32K trace scaled to 1/16; every turn checked token for token against a "
    "reference engine. --engines stand-in: engine stand-ins with modelled compute, 0.48 "
    "Gbit/s caps, 24 agents x 5 turns scaled to 1/4, model tiny-test."
)
# Per engine kind: (snic_read_gbps, agents, turns, context_scale)
MODE_DEFAULTS = {"vllm": (0.008, 16, 3, 1 / 16), "stand-in": (0.48, 24, 5, 0.25)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dualpath_common.models import MODEL_PRESETS
    from dualpath_local.config import DEFAULT_POLICIES

    parser.description = DEFAULTS_NOTE
    parser.add_argument(
        "--engines",
        choices=sorted(MODE_DEFAULTS),
        default="vllm",
        help="real vLLM engines (default) or the stand-ins with modelled compute",
    )
    g = parser.add_argument_group("cluster")
    g.add_argument("--prefill-nodes", type=int, default=1)
    g.add_argument("--decode-nodes", type=int, default=2)
    g.add_argument(
        "--snic-read-gbps",
        type=float,
        default=None,
        help="storage-NIC read cap per node, Gbit/s (8 = 1 GB/s); default 0.008 (vllm) or 0.48 "
        "(stand-in): low enough that the storage NIC, not this machine's CPUs, is the bottleneck",
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
        default=None,
        help="multiply the trace's token counts by this (default 1/16 vllm, 0.25 stand-in)",
    )
    w.add_argument("--agents", type=int, default=None, help="agent trajectories played at once")
    w.add_argument("--turns", type=int, default=None, help="turns played per trajectory")
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
    f = parser.add_argument_group("faults")
    f.add_argument(
        "--chaos",
        metavar="SPEC",
        help="kill or restart processes during every phase, e.g. "
        "'kill:decode-1@10s,restart:controller@20s' (ACTION kill|restart, TARGET a node's "
        "agent or controller, seconds after the phase starts); killed processes are brought "
        "back by the stack's supervisor. With --engines stand-in",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--json", type=Path, default=Path("out/demo/demo.json"), metavar="FILE")
    o.add_argument("--chart", type=Path, default=Path("out/demo/demo.png"), metavar="FILE")


def apply_mode_defaults(args: argparse.Namespace) -> None:
    gbps, agents, turns, scale = MODE_DEFAULTS[args.engines]
    for name, value in (
        ("snic_read_gbps", gbps),
        ("agents", agents),
        ("turns", turns),
        ("context_scale", scale),
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dualpath_local.chaos import parse_chaos
    from dualpath_local.config import DemoConfig
    from dualpath_local.driver import ComputeModel
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
        chaos=tuple(parse_chaos(args.chaos, chaos_targets(args))) if args.chaos else (),
    )


def chaos_targets(args: argparse.Namespace) -> list[str]:
    return [
        "controller",
        *(f"prefill-{i}" for i in range(args.prefill_nodes)),
        *(f"decode-{i}" for i in range(args.decode_nodes)),
    ]


def run(args: argparse.Namespace) -> int:
    import sys

    from dualpath_local.runner import DemoFailed, run_demo
    from rich.console import Console

    apply_mode_defaults(args)
    if args.engines == "vllm":
        if args.chaos:
            print(
                "dualpath demo: --chaos runs with --engines stand-in (the vLLM connector's own "
                "failover is tested in tests/integration/test_vllm_connector.py)",
                file=sys.stderr,
            )
            return 2
        return run_vllm(args)
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


def run_vllm(args: argparse.Namespace) -> int:
    import sys
    import tempfile

    from dualpath_local.interrupts import stop_signals_as_interrupt
    from dualpath_local.vllm_demo import VllmDemoConfig, run_vllm_demo
    from dualpath_vllm.model import default_model_dir, ensure_model_subprocess
    from dualpath_vllm.process import EnginesVenvMissing

    if args.prefill_nodes != 1:
        print("dualpath demo: --engines vllm runs one prefill node", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dualpath-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with stop_signals_as_interrupt():
            print(f"dualpath demo: real vLLM engines; stores and logs in {workdir}", flush=True)
            model = ensure_model_subprocess(default_model_dir())
            config = VllmDemoConfig(
                workdir=workdir,
                model_dir=model,
                policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
                trajectories=args.agents,
                turns=args.turns,
                context_scale=args.context_scale,
                snic_read_bytes_per_s=args.snic_read_gbps * 1e9 / 8,
                decode_nodes=args.decode_nodes,
                seed=args.seed,
                json_path=args.json,
            )
            result = run_vllm_demo(config, log=lambda line: print(line, flush=True))
    except EnginesVenvMissing as exc:
        print(f"dualpath demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the stack was stopped", flush=True)
        return 130
    print(f"numbers: {args.json}", flush=True)
    return 0 if result.ok else 1
