"""`dualpath router`: the OpenAI-compatible front door of prefill/decode vLLM engines.

    dualpath router --listen 127.0.0.1:8000 --controller 127.0.0.1:50051 \\
        --engine id=prefill-0,role=prefill,url=http://127.0.0.1:8001,node=node-0,agent=127.0.0.1:7001 \\
        --engine id=decode-0,role=decode,url=http://127.0.0.1:8002,node=node-1,agent=127.0.0.1:7002 \\
        --block-tokens 64 --hash-namespace tiny-llama --json-logs

The engines' agents must not report the same engines (run them without --engine): the
router registers the engines and reports their load itself, node read queue included.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn
from dualpath_common import tls
from dualpath_common.child import write_ready_file
from dualpath_common.logs import configure_logging

from dualpath_router.app import create_app
from dualpath_router.config import ConfigError, RouterConfig, build_config

log = logging.getLogger("dualpath.router")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:8000", help="HTTP address host:port (port 0 = any free)"
    )
    parser.add_argument("--controller", required=True, help="traffic controller host:port")
    parser.add_argument(
        "--controller-tls-ca",
        type=Path,
        help="CA file (or mounted TLS Secret directory) of the controller's gRPC TLS",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="mutual TLS identity directory (ca.crt, tls.crt, tls.key; role router) for the"
        " gRPC calls to the controller and the agents",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="call the controller and agents without mutual TLS (local tests only); one of"
        " --tls-dir or --insecure is required",
    )
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="SPEC",
        help="repeatable: id=ID,role=prefill|decode,url=http://HOST:PORT,node=NODE,"
        "agent=HOST:PORT[,hbm_tokens=N][,group=G]",
    )
    parser.add_argument(
        "--engines-file",
        type=Path,
        help="YAML/JSON list of engines (same keys as --engine), read again when it changes:"
        " engines added are fronted, engines removed are let go (a mounted ConfigMap)",
    )
    parser.add_argument("--block-tokens", type=int, default=64, help="tokens per KV block")
    parser.add_argument(
        "--hash-namespace",
        required=True,
        help="root of the block hash chains (the namespace the engines store blocks under)",
    )
    parser.add_argument(
        "--kv-bytes-per-token",
        type=int,
        default=1024,
        help="KV bytes per token, all layers (default: the tiny test model's 1024)",
    )
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=131_072, help="longest prompt accepted"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=16 << 20, help="largest request body (413 above)"
    )
    parser.add_argument(
        "--schedule-wait-s",
        type=float,
        default=1.0,
        help="how long a request may wait for capacity at the controller before a 503",
    )
    parser.add_argument(
        "--engine-read-timeout-s",
        type=float,
        default=600.0,
        help="longest wait for the next byte of an engine's answer",
    )
    parser.add_argument(
        "--tenant-header",
        help="request header naming the tenant (set by a trusted gateway); each tenant's KV"
        " cache is salted with an HMAC of it, and requests without it are refused",
    )
    parser.add_argument(
        "--tenant-secret-file",
        type=Path,
        help="file holding the secret (>= 16 bytes) the tenant salts are derived with",
    )
    parser.add_argument(
        "--ready-file", type=Path, help="write {port, pid} as JSON here once serving"
    )
    parser.add_argument("--json-logs", action="store_true", help="JSON lines logs on stderr")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, ... (default INFO)")


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen must be host:port, got {args.listen!r}")
    if args.tls_dir is None and not args.insecure:
        raise ConfigError(f"no gRPC identity: {tls.INSECURE_HINT}")
    if args.insecure:
        log.warning(
            "gRPC without mutual TLS: the router is not authenticated (--insecure)",
            extra={"component": "router"},
        )
    return build_config(
        engine_args=args.engine,
        engines_file=args.engines_file,
        listen_host=host,
        listen_port=int(port),
        controller=args.controller,
        controller_tls_ca=args.controller_tls_ca,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        block_tokens=args.block_tokens,
        hash_namespace=args.hash_namespace,
        kv_bytes_per_token=args.kv_bytes_per_token,
        max_prompt_tokens=args.max_prompt_tokens,
        max_body_bytes=args.max_body_bytes,
        schedule_wait_s=args.schedule_wait_s,
        engine_read_timeout_s=args.engine_read_timeout_s,
        tenant_header=args.tenant_header,
        tenant_secret_file=args.tenant_secret_file,
    )


def configure_front_door_logging(component: str, json_logs: bool, level: str | None) -> None:
    """Logging of `dualpath router` and `dualpath picker` (`component` names the logs)."""
    if json_logs:
        configure_logging(component, level)
    else:
        logging.basicConfig(
            level=(level or os.environ.get("DUALPATH_LOG_LEVEL", "INFO")).upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # One line per engine call (metrics polls included) would drown the request logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def serve(config: RouterConfig, sock: socket.socket, ready_file: Path | None) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_config=None,  # our logging (JSON lines) stays in charge
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        port = sock.getsockname()[1]
        log.info("router listening", extra={"address": f"{config.listen_host}:{port}"})
        if ready_file is not None:
            write_ready_file(ready_file, {"port": port})
    await task


def run(args: argparse.Namespace) -> int:
    configure_front_door_logging("router", args.json_logs, args.log_level)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"dualpath router: {exc}", file=sys.stderr)
        return 2
    try:
        sock = socket.create_server((config.listen_host, config.listen_port))
    except OSError as exc:
        print(f"dualpath router: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    with sock:
        asyncio.run(serve(config, sock, args.ready_file))
    return 0
