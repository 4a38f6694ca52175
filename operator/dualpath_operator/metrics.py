"""Prometheus metrics of the operator (served by dualpath_common.observability)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

HANDLER_CALLS = Counter("dualpath_operator_handler_calls_total", "Handler invocations", ["handler"])
HANDLER_ERRORS = Counter(
    "dualpath_operator_handler_errors_total", "Handler invocations that raised", ["handler"]
)
HANDLER_DURATION = Histogram(
    "dualpath_operator_handler_duration_seconds",
    "Handler wall time",
    ["handler"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILES = Counter(
    "dualpath_operator_reconcile_total",
    "Reconciles of DualPathClusters by outcome",
    ["result"],  # applied | invalid | gone | error
)
CHILD_WRITES = Counter(
    "dualpath_operator_child_writes_total",
    "Child objects created/updated/deleted by the operator",
    ["kind", "action"],
)
STATUS_WRITES = Counter("dualpath_operator_status_writes_total", "Status subresource writes")
EVENTS_POSTED = Counter("dualpath_operator_events_total", "Kubernetes Events posted", ["type"])
QUEUE_DEPTH = Gauge("dualpath_operator_queue_depth", "DualPathClusters waiting for a reconcile")
CLUSTERS = Gauge("dualpath_operator_clusters", "DualPathClusters known to this operator")
LEADER = Gauge("dualpath_operator_leader", "1 while this replica holds the leader Lease")
CERTIFICATES_ISSUED = Counter(
    "dualpath_operator_certificates_issued_total",
    "Role certificates the operator issued, by role and cause",
    ["role", "cause"],  # cause: missing | invalid | ca-changed | names-changed | expiring
)
CA_ROTATIONS = Counter(
    "dualpath_operator_ca_changes_total",
    "Changes to operator-issued cluster CAs",
    ["action"],  # create | publish-next | promote | drop-expired
)
THROTTLED = Counter(
    "dualpath_operator_throttled_total",
    "Reconciles delayed because one object was reconciled too often (hot-loop guard)",
)


@contextmanager
def track(handler: str) -> Iterator[None]:
    """Count, time and error-count one handler call."""
    HANDLER_CALLS.labels(handler).inc()
    start = time.perf_counter()
    try:
        yield
    except Exception:
        HANDLER_ERRORS.labels(handler).inc()
        raise
    finally:
        HANDLER_DURATION.labels(handler).observe(time.perf_counter() - start)
