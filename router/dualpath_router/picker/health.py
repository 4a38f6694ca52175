"""Readiness of the endpoint picker, published two ways: gRPC health checking on the
ext_proc port (what a gateway's health checks and the EPP protocol ask for: services "",
`liveness`, `readiness`, `envoy.service.ext_proc.v3.ExternalProcessor`) and /readyz on the
metrics port. Ready = the traffic controller answered and at least one prefill engine is
up and in service there (the router's health check, decode engines aside: the picker
sends whole requests to prefill engines, the controller still needs a decode engine to
book, which it reports as no capacity)."""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from dualpath_router.app import Runtime
from dualpath_router.picker.metrics import PickerMetrics
from dualpath_router.picker.protocol import EXTPROC_SERVICE

log = logging.getLogger("dualpath.picker.health")
LIVENESS = "liveness"
READINESS = "readiness"
READY_SERVICES = ("", READINESS, EXTPROC_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def prefill_problems(report: dict[str, object]) -> list[str]:
    """What keeps the picker from serving, from the router's health report."""
    problems = []
    controller = report.get("controller")
    if not isinstance(controller, dict) or not controller.get("ok"):
        problem = controller.get("problem") if isinstance(controller, dict) else "unknown"
        problems.append(f"traffic controller: {problem}")
    engines = report.get("engines")
    prefill = [e for e in (engines or {}).values() if e.get("role") == "prefill"]  # type: ignore[attr-defined]
    if not any(e["up"] for e in prefill):
        problems.append("no prefill engine is up")
    elif not problems and not any(
        e["up"] and e["registered"] and not e["drained"] for e in prefill
    ):
        problems.append("no prefill engine is up and in service at the controller")
    return problems


class Readiness:
    """Checks readiness every `interval_s` and publishes it (gRPC health, /readyz, gauge)."""

    def __init__(self, runtime: Runtime, metrics: PickerMetrics, interval_s: float = 1.0) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.interval_s = interval_s
        self.health = health_aio.HealthServicer()
        self.ready = False
        self.reason = "not checked yet"

    async def start(self) -> None:
        await self.health.set(LIVENESS, SERVING)
        for service in READY_SERVICES:
            await self.health.set(service, NOT_SERVING)

    def check(self) -> tuple[bool, str]:
        """For /readyz (called from the metrics server's thread)."""
        return self.ready, self.reason

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug must not stop the checks
                log.exception("readiness check failed")
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        _, report = await self.runtime.health()
        problems = prefill_problems(report)
        ready = not problems
        if ready != self.ready:
            log.info("picker ready" if ready else "picker not ready", extra={"problems": problems})
        self.ready, self.reason = ready, "ok" if ready else "; ".join(problems)
        self.metrics.ready.set(1 if ready else 0)
        for service in READY_SERVICES:
            await self.health.set(service, SERVING if ready else NOT_SERVING)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
