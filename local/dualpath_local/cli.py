"""`dualpath local up`: start the local stack (traffic controller + one agent per node on
loopback, stores pre-populated, engines registered and reporting) and keep it up until
Ctrl-C, printing its endpoints. `dualpath demo` runs workloads on the same stack."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="local_command", metavar="SUBCOMMAND", required=True)
    up = sub.add_parser("up", help="start the stack and keep it up until Ctrl-C")
    up.add_argument("--prefill-nodes", type=int, default=1)
    up.add_argument("--decode-nodes", type=int, default=2)
    up.add_argument("--snic-read-gbps", type=float, default=0.48, help="per-node read cap")
    up.add_argument("--policy", default="dualpath-split", help="the controller's policy")
    up.add_argument("--model", default="tiny-test")
    up.add_argument("--agents", type=int, default=24, help="trajectories whose KV is stored")
    up.add_argument("--transport", choices=["auto", "nixl", "fallback"], default="auto")
    up.add_argument("--workdir", type=Path, help="stores and logs here (default: a temp dir)")
    up.add_argument(
        "--engines",
        choices=["stand-in", "vllm"],
        default="stand-in",
        help="vllm: real vLLM engines behind `dualpath router`, for your own OpenAI client",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from dualpath_local.config import DemoConfig
    from dualpath_local.runner import DemoFailed, run_demo
    from dualpath_local.workload import WorkloadConfig

    if args.engines == "vllm":
        return run_vllm_up(args)

    config = DemoConfig(
        workload=WorkloadConfig(trajectories=args.agents, model=args.model),
        prefill_nodes=args.prefill_nodes,
        decode_nodes=args.decode_nodes,
        snic_read_gbps=args.snic_read_gbps,
        policies=(),
        up_policy=args.policy,
        transport=args.transport,
        workdir=args.workdir,
        keep=True,
        json_path=None,
        chart_path=None,
    )
    try:
        config.validate()
    except ValueError as exc:
        print(f"dualpath local up: {exc}", file=sys.stderr)
        return 2
    console = Console()
    try:
        run_demo(config, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the stack was stopped[/yellow]")
        return 130
    except ValueError as exc:  # the configuration does not fit this machine
        print(f"dualpath local up: {exc}", file=sys.stderr)
        return 2
    except DemoFailed as exc:
        print(
            f"dualpath local up failed: {exc}" + (f" (logs: {exc.workdir})" if exc.workdir else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def run_vllm_up(args: argparse.Namespace) -> int:
    """The real-engine stack, kept up: point any OpenAI client at the router it prints."""
    import json
    import tempfile
    import time

    from dualpath_vllm.model import default_model_dir, ensure_model_subprocess

    from dualpath_local.interrupts import stop_signals_as_interrupt
    from dualpath_local.vllm_stack import SERVED_MODEL, VllmStack, VllmStackConfig

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dualpath-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gbps = args.snic_read_gbps
    stack = VllmStack(
        VllmStackConfig(
            workdir=workdir,
            model_dir=ensure_model_subprocess(default_model_dir()),
            prefill_nodes=args.prefill_nodes,
            decode_nodes=args.decode_nodes,
            snic_read_bytes_per_s=gbps * 1e9 / 8,
            reference=False,
        )
    )
    try:
        with stop_signals_as_interrupt():
            stack.start(args.policy)
            assert stack.router is not None
            print(f"router (OpenAI API): {stack.router.url}/v1, model {SERVED_MODEL!r}", flush=True)
            print(json.dumps(json.loads((workdir / "stack.json").read_text()), indent=2))
            print("Ctrl-C stops every process.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("interrupted: the stack was stopped", flush=True)
        return 0
    finally:
        stack.close()
