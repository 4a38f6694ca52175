"""`dualpath operator`: run the DualPathCluster operator.

Runs kopf programmatically (kopf.operator in this process's asyncio loop) with our
handler registry, a reconcile work queue, optional Lease leader election, and
dualpath_common's ObservabilityServer for /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from dualpath_common.child import write_ready_file
from dualpath_common.logs import configure_logging
from dualpath_common.observability import ObservabilityServer

log = logging.getLogger("dualpath.operator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to serve (repeatable; globs like 'team-*' work)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, in-cluster)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="use 0.0.0.0 in a pod")
    parser.add_argument("--metrics-port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=4, help="concurrent reconciles")
    parser.add_argument(
        "--resync-seconds", type=float, default=120.0, help="re-check every cluster this often"
    )
    parser.add_argument(
        "--discovery-ttl", type=float, default=60.0, help="cache API discovery this long"
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take a Lease so only one replica acts",
    )
    parser.add_argument("--lease-name", default="dualpath-operator")
    parser.add_argument(
        "--lease-namespace",
        help="default: POD_NAMESPACE, else the first --namespace, else 'default'",
    )
    parser.add_argument("--lease-duration", type=float, default=15.0)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    parser.add_argument("--identity", help="leader-election identity (default: host-pid)")
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error")
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write {metrics_port, pid} as JSON here once /metrics and /readyz serve",
    )


@dataclass
class Health:
    """What /readyz reports."""

    phase: str = "starting"
    leader: str = ""

    def readiness(self) -> tuple[bool, str]:
        if self.phase == "running":
            return True, "leader: reconciling"
        if self.phase == "standby":
            # A standby is healthy: it is ready to take over.
            return True, f"standby (leader: {self.leader or 'unknown'})"
        return False, self.phase


def lease_namespace(args: argparse.Namespace) -> str:
    if args.lease_namespace:
        return str(args.lease_namespace)
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    exact = [ns for ns in args.namespace if not any(c in ns for c in "*?[")]
    return exact[0] if exact else "default"


def quiet_libraries() -> None:
    # One line per HTTP request (httpx) or per handled event (kopf.objects) would bury the
    # operator's own logs; their warnings and errors still come through.
    for name in ("httpx", "httpcore", "kopf.objects", "kopf.activities.authentication"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    configure_logging("operator", args.log_level)
    quiet_libraries()
    if not args.namespace and not args.all_namespaces:
        print("dualpath operator: give --namespace NS (repeatable) or --all-namespaces")
        return 2
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    health = Health()
    server = ObservabilityServer(
        host=args.metrics_host, port=args.metrics_port, readiness=health.readiness
    ).start()
    if args.ready_file is not None:
        write_ready_file(args.ready_file, {"metrics_port": server.port})
    log.info(
        "operator starting",
        extra={
            "identity": identity,
            "metrics": f"http://{server.address}/metrics",
            "namespaces": args.namespace or "*",
        },
    )
    try:
        return asyncio.run(_main(args, identity, health))
    finally:
        server.stop()


async def _main(args: argparse.Namespace, identity: str, health: Health) -> int:
    import kopf

    from dualpath_operator import handlers, metrics
    from dualpath_operator.kube import KubeClient
    from dualpath_operator.leader import LeaderElector, LeadershipLost
    from dualpath_operator.reconciler import CapabilityCache, Reconciler
    from dualpath_operator.workqueue import WorkQueue

    kube = KubeClient.from_kubeconfig(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    elector = None
    if args.leader_elect:
        elector = LeaderElector(
            kube,
            lease_namespace(args),
            args.lease_name,
            identity,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )
        health.phase = "standby"
        if not await _acquire_or_stop(elector, stop, health):
            await kube.aclose()
            return 0
    else:
        metrics.LEADER.set(1)

    capabilities = CapabilityCache(kube, ttl=args.discovery_ttl)
    reconciler = Reconciler(kube, capabilities, identity, resync_seconds=args.resync_seconds)

    async def work(key: object) -> float | None:
        with metrics.track("reconcile"):
            outcome = await reconciler.reconcile(handlers.queue_key(key))
        return outcome.requeue_after

    queue = WorkQueue(work, concurrency=args.workers)
    runtime = handlers.OperatorRuntime(reconciler, queue, capabilities)
    ready = asyncio.Event()

    async def mark_ready() -> None:
        await ready.wait()
        # kopf replaced our signal handlers with its own, which stop kopf without setting
        # `stop`; kopf then waits 5 s for its own stop-flag waiter. Ours again: one path.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health.phase = "running"
        log.info("operator running", extra={"identity": identity})

    # Our long-lived tasks start before kopf: kopf cancels every task created after its
    # own start when it stops, and would take our work queue's workers down with it.
    queue_task = asyncio.create_task(queue.run(), name="workqueue")
    keep_task = asyncio.create_task(elector.keep(), name="lease") if elector else None
    ready_task = asyncio.create_task(mark_ready())
    await asyncio.sleep(0)  # let the queue spawn its workers
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=handlers.build_registry(runtime, args.kubeconfig),
            settings=handlers.build_settings(),
            standalone=True,
            clusterwide=bool(args.all_namespaces),
            namespaces=list(args.namespace),
            stop_flag=stop,
            ready_flag=ready,
        ),
        name="kopf",
    )
    tasks = {t for t in (kopf_task, queue_task, keep_task) if t is not None}
    rc = 0
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if keep_task in done and isinstance(_failure(keep_task), LeadershipLost):
        log.error("leadership lost; stopping so a standby takes over", exc_info=_failure(keep_task))
        rc = 1
    elif queue_task in done:
        log.error("work queue stopped", exc_info=_failure(queue_task))
        rc = 1
    elif kopf_task in done and not stop.is_set():
        # kopf gave up (e.g. a watched CRD vanished mid-watch): exit non-zero so the
        # Deployment restarts a clean process instead of idling without watches.
        log.error("kopf stopped unexpectedly", exc_info=_failure(kopf_task))
        rc = 1
    health.phase = "stopping"
    stop.set()
    with contextlib.suppress(asyncio.TimeoutError, Exception):
        await asyncio.wait_for(kopf_task, timeout=15)
    for task in (queue_task, keep_task, ready_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    # kopf stopped its watches; a reconcile still in flight must not outlive the client.
    if elector is not None and rc == 0:
        await elector.release()
    await kube.aclose()
    log.info("operator stopped", extra={"rc": rc})
    return rc


def _failure(task: asyncio.Task[object]) -> BaseException | None:
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


async def _acquire_or_stop(elector: object, stop: asyncio.Event, health: Health) -> bool:
    """Wait for the Lease (True) or a stop signal (False), keeping /readyz informed."""
    from dualpath_operator.leader import LeaderElector

    assert isinstance(elector, LeaderElector)
    acquire = asyncio.create_task(elector.acquire())
    stopped = asyncio.create_task(stop.wait())

    async def report() -> None:
        while True:
            health.leader = elector.holder
            await asyncio.sleep(elector.retry_period)

    reporter = asyncio.create_task(report())
    try:
        done, _ = await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reporter.cancel()
    if acquire in done:
        stopped.cancel()
        acquire.result()
        return True
    acquire.cancel()
    return False
