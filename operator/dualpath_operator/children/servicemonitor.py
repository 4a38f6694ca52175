"""A Prometheus Operator ServiceMonitor over the controller and agent Services, when
monitoring asks for it and the monitoring.coreos.com CRD is installed."""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.children.service import METRICS_LABEL
from dualpath_operator.constants import LABEL_INSTANCE
from dualpath_operator.discovery import Capabilities
from dualpath_operator.kube import Obj, ResourceType

SERVICE_MONITOR = ResourceType("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")


def service_monitor(ctx: ClusterContext) -> Obj:
    monitoring = ctx.spec.monitoring
    return {
        "apiVersion": SERVICE_MONITOR.api_version,
        "kind": SERVICE_MONITOR.kind,
        "metadata": ctx.metadata(
            ctx.name, "monitoring", labels=dict(monitoring.service_monitor_labels)
        ),
        "spec": {
            "selector": {"matchLabels": {LABEL_INSTANCE: ctx.name, METRICS_LABEL: "true"}},
            "namespaceSelector": {"matchNames": [ctx.namespace]},
            "endpoints": [
                {"port": "metrics", "path": "/metrics", "interval": monitoring.scrape_interval}
            ],
        },
    }


def resource_for(caps: Capabilities) -> ResourceType | None:
    return SERVICE_MONITOR if caps.service_monitors else None


def build(ctx: ClusterContext) -> list[Obj]:
    monitoring = ctx.spec.monitoring
    if not (
        ctx.capabilities.service_monitors and monitoring.service_monitor and monitoring.metrics
    ):
        return []
    return [service_monitor(ctx)]


KIND = ChildKind("servicemonitor", resource_for, build, prune=True, phase=1)
