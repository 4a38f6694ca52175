"""`dualpath picker`: the Gateway API Inference Extension endpoint picker (Envoy ext_proc).

    dualpath picker --listen 0.0.0.0:9002 --controller dualpath-controller:50051 \\
        --engines-file /etc/dualpath/engines.yaml --hash-namespace tiny-llama \\
        --block-tokens 64 --metrics-port 9003 --tls-dir /var/run/dualpath/router

The gateway's ext_proc filter dials --listen (plaintext, or TLS with
--extproc-tls-cert-file/--extproc-tls-key-file); the picker's own calls to the controller
and the agents use --tls-dir (a router identity) or --insecure, like `dualpath router`,
whose engine, limit and tenancy flags it shares. Engine URLs must be the addresses the
gateway routes to (pod ip:port), which is how the gateway's endpoint subset is matched.
Configure the filter with request_body_mode BUFFERED (or FULL_DUPLEX_STREAMED), response
headers sent (the default) and a response_body_mode other than NONE (the answer's end then
Completes the request; with NONE it is Completed when the answer starts, and a filter that
sends no response phase at all makes every request look abandoned: Cancelled), and a
message_timeout that covers a Schedule (seconds, not Envoy's 200 ms default).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dualpath_common import tls

from dualpath_router import cli as router_cli
from dualpath_router.config import ConfigError
from dualpath_router.picker.server import PickerSettings, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    router_cli.add_arguments(parser)
    parser.set_defaults(listen="0.0.0.0:9002")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9003,
        help="HTTP port of /metrics, /healthz and /readyz (0 = any free), on --listen's host",
    )
    parser.add_argument(
        "--extproc-tls-cert-file",
        type=Path,
        help="serve ext_proc over TLS with this certificate (PEM); plaintext without it",
    )
    parser.add_argument(
        "--extproc-tls-key-file", type=Path, help="the key of --extproc-tls-cert-file (PEM)"
    )


def run(args: argparse.Namespace) -> int:
    router_cli.configure_front_door_logging("picker", args.json_logs, args.log_level)
    try:
        config = router_cli.config_from_args(args)
    except ConfigError as exc:
        print(f"dualpath picker: {exc}", file=sys.stderr)
        return 2
    settings = PickerSettings(
        metrics_port=args.metrics_port,
        tls_cert_file=args.extproc_tls_cert_file,
        tls_key_file=args.extproc_tls_key_file,
    )
    try:
        asyncio.run(serve(config, settings, args.ready_file))
    except tls.TlsConfigError as exc:
        print(f"dualpath picker: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dualpath picker: {exc}", file=sys.stderr)
        return 1
    return 0
