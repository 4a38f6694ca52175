"""The endpoint picker's process: the router's runtime (engines, prefix lookups, controller
session), a grpc.aio server with the ext_proc and gRPC health services on the port the
gateway dials, and the metrics/health HTTP server; stopped by SIGTERM/SIGINT (open streams
get their grace period, then every booked request is released before the session
closes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from dualpath_common import tls
from dualpath_common.child import write_ready_file
from dualpath_common.observability import ObservabilityServer
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from grpc_health.v1 import health_pb2_grpc

from dualpath_router.app import Runtime
from dualpath_router.config import RouterConfig
from dualpath_router.metrics import RouterMetrics
from dualpath_router.picker.decision import Decider
from dualpath_router.picker.extproc import ExternalProcessor
from dualpath_router.picker.health import Readiness
from dualpath_router.picker.metrics import PickerMetrics

log = logging.getLogger("dualpath.picker")
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class PickerSettings:
    """What the picker adds to the router's configuration."""

    metrics_port: int = 9003
    # TLS of the ext_proc port (what the gateway dials); plaintext without a pair.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    readiness_interval_s: float = 1.0


def server_credentials(settings: PickerSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise tls.TlsConfigError("--extproc-tls-cert-file and --extproc-tls-key-file go together")
    return tls.ReloadingServerCertificate(
        settings.tls_cert_file, settings.tls_key_file
    ).credentials()


async def serve(config: RouterConfig, settings: PickerSettings, ready_file: Path | None) -> None:
    credentials = server_credentials(settings)  # a bad pair fails before anything starts
    router_metrics = RouterMetrics()
    metrics = PickerMetrics(router_metrics.registry)
    runtime = Runtime(config, router_metrics)
    await runtime.start()
    decider = Decider(runtime, metrics)
    readiness = Readiness(runtime, metrics, settings.readiness_interval_s)
    server = grpc.aio.server()
    ext_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(decider, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(readiness.health, server)
    address = f"{config.listen_host}:{config.listen_port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    observability = ObservabilityServer(
        config.listen_host, settings.metrics_port, readiness.check, router_metrics.registry
    )
    await readiness.start()
    await server.start()
    observability.start()
    checks = asyncio.create_task(readiness.run(), name="readiness")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "endpoint picker serving",
        extra={
            "address": f"{config.listen_host}:{port}",
            "tls": credentials is not None,
            "metrics_port": observability.port,
            "controller": config.controller,
        },
    )
    if ready_file is not None:
        write_ready_file(ready_file, {"port": port, "metrics_port": observability.port})
    try:
        await stop.wait()
    finally:
        log.info("endpoint picker stopping")
        await readiness.stop()
        await server.stop(STOP_GRACE_S)
        checks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checks
        await decider.drain()
        await runtime.close()
        observability.stop()
