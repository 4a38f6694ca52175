"""`dualpath agent`: run one node's KV agent.

Prints one line `DUALPATH_AGENT_READY {json}` on stdout when serving (and writes the same
JSON to --ready-file) so scripts learn the ports chosen with :0. SIGTERM/SIGINT stop it
gracefully. Debug-only fault injection comes from the environment (logged loudly):
DUALPATH_AGENT_DEBUG_PERSIST_PAUSE="<mid-write|before-rename|after-rename>:<marker file>",
DUALPATH_AGENT_DEBUG_ENOSPC_AFTER_BYTES=<n>.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from dualpath_common import tls
from dualpath_common.logs import configure_logging

log = logging.getLogger("dualpath_agent")

_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}


def parse_size(text: str) -> int:
    """'256MiB', '1g', '4096' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 64MiB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", required=True, help="node name (shown in Stat, logs, metrics)")
    parser.add_argument("--role", choices=["prefill", "decode"], required=True)
    parser.add_argument("--store", required=True, type=Path, help="block store directory")
    parser.add_argument(
        "--capacity", type=parse_size, default=0, help="store capacity (0 = unlimited)"
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC host:port (port 0 = any)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="/metrics /healthz /readyz port"
    )
    parser.add_argument(
        "--buffer-bytes", type=parse_size, default=256 << 20, help="host (PE/DE) buffer"
    )
    parser.add_argument(
        "--device-bytes", type=parse_size, default=256 << 20, help="device tier size"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "gpu", "dram"],
        default="auto",
        help="device tier: GPU memory when found (auto), required (gpu) or host DRAM (dram)",
    )
    parser.add_argument(
        "--snic-read-gbps",
        type=float,
        default=0.0,
        help="cap storage reads at this many Gbit/s (8 Gbit/s = 1 GB/s) to emulate a "
        "saturated storage NIC; 0 = no cap",
    )
    parser.add_argument(
        "--read-concurrency",
        type=int,
        default=1,
        help="storage reads served at once, first come first served",
    )
    parser.add_argument(
        "--stream-group-bytes",
        type=parse_size,
        default=16 << 20,
        help="decode side: stream each group of this many bytes while reading the next "
        "(0 = read everything first)",
    )
    parser.add_argument("--transport", choices=["auto", "nixl", "fallback"], default="auto")
    parser.add_argument("--traffic-class", type=int, help="UCX_IB_TRAFFIC_CLASS for KV traffic")
    parser.add_argument("--service-level", type=int, help="UCX_IB_SL for KV traffic")
    parser.add_argument("--dscp", type=int, help="DSCP for fallback sockets (IP_TOS = dscp << 2)")
    parser.add_argument("--hold-seconds", type=float, default=120.0, help="lease of held buffers")
    parser.add_argument(
        "--region-quarantine-seconds",
        type=float,
        default=5.0,
        help="after a peer stream breaks off, wait this long before reusing its target region",
    )
    parser.add_argument("--grace-seconds", type=float, default=10.0, help="shutdown grace period")
    parser.add_argument(
        "--transfer-timeout", type=float, default=60.0, help="seconds per transfer step"
    )
    parser.add_argument("--ready-file", type=Path, help="write endpoints as JSON here when serving")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="mutual TLS identity directory (ca.crt, tls.crt, tls.key): serve only callers with"
        " a certificate of this CA, authorized by role; call peers and the controller with it",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext gRPC without caller authentication (local tests only); one of"
        " --tls-dir or --insecure is required",
    )
    parser.add_argument("--controller", help="traffic controller host:port to report load to")
    parser.add_argument(
        "--controller-tls-ca",
        type=Path,
        help="reach the controller over TLS, trusting this CA file or mounted TLS Secret"
        " directory (its ca.crt, else tls.crt)",
    )
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        help="engine id on this node to register with the controller (repeatable)",
    )
    parser.add_argument(
        "--no-engines",
        action="store_true",
        help="register no engine (not even the default NODE/engine0): this node's engines are"
        " registered by a router or endpoint picker; the controller link then only reports"
        " failed peers",
    )
    parser.add_argument("--engine-hbm-tokens", type=int, default=1_000_000)
    parser.add_argument("--log-level", default=None)


def _faults_from_env() -> object:
    from dualpath_agent.store import StoreFaults

    faults = StoreFaults()
    pause = os.environ.get("DUALPATH_AGENT_DEBUG_PERSIST_PAUSE", "")
    if pause:
        phase, _, marker = pause.partition(":")
        faults.pause_phase, faults.pause_marker = phase, marker
        log.warning("DEBUG FAULT INJECTION: persist pause", extra={"phase": phase})
    enospc = os.environ.get("DUALPATH_AGENT_DEBUG_ENOSPC_AFTER_BYTES", "")
    if enospc:
        faults.enospc_after_bytes = int(enospc)
        log.warning("DEBUG FAULT INJECTION: ENOSPC", extra={"after_bytes": enospc})
    return faults


def run(args: argparse.Namespace) -> int:
    configure_logging("agent", args.log_level)
    from dualpath_agent.core import AgentConfig
    from dualpath_agent.server import AgentProcess
    from dualpath_agent.transport import QosConfig

    config = AgentConfig(
        node=args.node,
        role=args.role,
        store_dir=args.store,
        capacity_bytes=args.capacity,
        listen=args.listen,
        metrics_port=args.metrics_port,
        buffer_bytes=args.buffer_bytes,
        device_bytes=args.device_bytes,
        device_mode=args.device,
        snic_read_bytes_per_s=args.snic_read_gbps * 1e9 / 8,
        read_concurrency=args.read_concurrency,
        stream_group_bytes=args.stream_group_bytes,
        transport=args.transport,
        qos=QosConfig(args.traffic_class, args.service_level, args.dscp),
        grace_s=args.grace_seconds,
        hold_s=args.hold_seconds,
        region_quarantine_s=args.region_quarantine_seconds,
        transfer_timeout_s=args.transfer_timeout,
        faults=_faults_from_env(),  # type: ignore[arg-type]
    )
    if args.no_engines and args.engine:
        print("dualpath agent: --no-engines contradicts --engine", file=sys.stderr)
        return 2
    controller_trust: Path | None = None
    if args.controller_tls_ca is not None:
        try:  # a bad TLS file is a startup error that names it, not a reporter that fails
            controller_trust = tls.trust_file(args.controller_tls_ca)
            tls.read_pem(controller_trust, "controller TLS CA")
        except tls.TlsConfigError as exc:
            print(f"dualpath agent: {exc}", file=sys.stderr)
            return 2
    try:
        identity = tls.identity_or_insecure(args.tls_dir, args.insecure, "agent")
        if identity is not None and controller_trust is not None:
            raise ValueError(
                "--controller-tls-ca: with --tls-dir the controller is reached with it"
            )
    except ValueError as exc:  # TlsConfigError included
        print(f"dualpath agent: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent = AgentProcess(config, identity)
    except Exception as exc:
        log.error("agent failed to start", extra={"error": str(exc)})
        print(f"dualpath agent: {exc}", file=sys.stderr)
        return 1
    agent.start()
    if args.controller:
        from dualpath_agent.reporter import LoadReporter

        agent.reporter = LoadReporter(
            agent,
            args.controller,
            args.engine,
            args.engine_hbm_tokens,
            tls_ca=controller_trust,
            identity=identity,
            placeholder=not args.no_engines,
        )
        agent.reporter.start()
        agent.service.on_peer_failure = agent.reporter.peer_failed
    if args.ready_file:
        agent.write_ready_file(args.ready_file)
    print("DUALPATH_AGENT_READY " + json.dumps(agent.info()), flush=True)
    stop.wait()
    agent.stop()
    return 0
