"""`dualpath controller`: run the traffic controller gRPC server."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from pathlib import Path

from dualpath_common import tls
from dualpath_common.child import write_ready_file
from dualpath_common.logs import configure_logging

from dualpath_controller.policy import describe_policies, get_policy, parse_policy_params
from dualpath_controller.server import ControllerServer
from dualpath_controller.state import ControllerState

log = logging.getLogger("dualpath.controller")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:50051", help="gRPC address host:port (port 0 = any free)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="metrics/health bind address")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="port for /metrics, /healthz, /readyz (0 = any free port, -1 = off)",
    )
    parser.add_argument(
        "--policy", default="paper", help="paper | prefill-only | round-robin | dualpath-split"
    )
    parser.add_argument(
        "--policy-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="policy parameter, repeatable (e.g. alpha=3748500 beta=1e6 z=1.05)",
    )
    parser.add_argument(
        "--liveness-timeout-s",
        type=float,
        default=5.0,
        help="drain an engine that sends no report for this long",
    )
    parser.add_argument(
        "--request-ttl-s",
        type=float,
        default=3_600.0,
        help="release a request never completed nor cancelled after this long",
    )
    parser.add_argument(
        "--report-interval-ms", type=int, default=500, help="report interval asked of engines"
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=32,
        help="caps long-lived StreamLoad/WatchStatus calls at half of this (the name is from"
        " the former threaded server; the grpc.aio server holds no thread per call)",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="decide Schedules that arrive within this window together (the policy's batch"
        " form over all of them); 0 = off: each call, and each Session message's Schedules,"
        " is one batch",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=16,
        help="Session streams open at once (more are refused with RESOURCE_EXHAUSTED)",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serve gRPC over TLS with this PEM certificate (a mounted kubernetes.io/tls"
        " Secret's tls.crt); needs --tls-key-file",
    )
    parser.add_argument("--tls-key-file", type=Path, help="the PEM private key (tls.key)")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="mutual TLS identity directory (ca.crt, tls.crt, tls.key): serve only callers with"
        " a certificate of this CA, authorized by role",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving without caller authentication: plaintext, or server-only TLS with"
        " --tls-cert-file; one of --tls-dir or --insecure is required",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {grpc_port, metrics_port, pid} as JSON here once serving",
    )
    parser.add_argument("--list-policies", action="store_true", help="print policies and exit")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, ... (default INFO)")


def _list_policies() -> int:
    for name, params in describe_policies().items():
        print(name)
        for key, spec in params.items():
            print(f"  {key}={spec.default:g}  [{spec.minimum:g}, {spec.maximum:g}]  {spec.help}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_policies:
        return _list_policies()
    configure_logging("controller", args.log_level)
    try:
        policy = get_policy(args.policy, **parse_policy_params(args.policy_param))
        state = ControllerState(
            policy,
            liveness_timeout_s=args.liveness_timeout_s,
            report_interval_s=args.report_interval_ms / 1000,
            request_ttl_s=args.request_ttl_s,
        )
    except ValueError as exc:
        print(f"dualpath controller: {exc}", file=sys.stderr)
        return 2
    metrics_port = None if args.metrics_port < 0 else args.metrics_port
    try:
        if args.tls_dir is not None and args.tls_cert_file is not None:
            raise ValueError("--tls-dir and --tls-cert-file exclude each other")
        identity = tls.identity_or_insecure(args.tls_dir, args.insecure, "controller")
    except (ValueError, OSError) as exc:
        print(f"dualpath controller: {exc}", file=sys.stderr)
        return 2
    try:
        server = ControllerServer(
            state,
            args.listen,
            max_workers=args.max_workers,
            max_sessions=args.max_sessions,
            batch_window_s=args.batch_window_ms / 1000,
            metrics_host=args.metrics_host,
            metrics_port=metrics_port,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
            identity=identity,
        )
    except (ValueError, OSError) as exc:
        print(f"dualpath controller: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        port = server.start()
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        print(f"dualpath controller: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    # Everything alive now (modules, policy, server) lives as long as the process: move it
    # out of the cyclic GC's reach, so full collections only walk what calls create (a full
    # pass over ~70k import-time objects took ~30-50 ms on a loaded 2-core VM, a pause every
    # caller waits out; measured in bench/bench_controller.py via the gc pause metrics).
    gc.collect()
    gc.freeze()
    if args.ready_file is not None:
        _write_ready_file(args.ready_file, server, port)
    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    log.info("shutting down")
    server.stop()
    return 0


def _write_ready_file(path: Path, server: ControllerServer, port: int) -> None:
    metrics_port = server.observability.port if server.observability else None
    write_ready_file(path, {"grpc_port": port, "metrics_port": metrics_port})
