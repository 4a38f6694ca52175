"""Services: the controller's ClusterIP endpoint and a headless Service over all agents
(peer discovery by DNS, and a metrics target for the ServiceMonitor)."""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.kube import Obj, ResourceType

SERVICE = ResourceType("v1", "Service", "services")
METRICS_LABEL = "dualpath.io/metrics"


def _ports(ctx: ClusterContext, grpc: int, metrics: int) -> list[Obj]:
    ports = [{"name": "grpc", "port": grpc, "targetPort": "grpc", "protocol": "TCP"}]
    if ctx.spec.monitoring.metrics:
        ports.append(
            {"name": "metrics", "port": metrics, "targetPort": "metrics", "protocol": "TCP"}
        )
    return ports


def _metrics_labels(ctx: ClusterContext) -> dict[str, str]:
    return {METRICS_LABEL: "true"} if ctx.spec.monitoring.metrics else {}


def controller_service(ctx: ClusterContext) -> Obj:
    ctl = ctx.spec.traffic_controller
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.controller_name, "controller", labels=_metrics_labels(ctx)),
        "spec": {
            "type": "ClusterIP",
            "selector": ctx.selector_labels("controller"),
            "ports": _ports(ctx, ctl.port, ctl.metrics_port),
        },
    }


def agents_service(ctx: ClusterContext) -> Obj:
    agent = ctx.spec.agent
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(ctx.agents_service_name, "agent", labels=_metrics_labels(ctx)),
        "spec": {
            "clusterIP": "None",
            "selector": ctx.selector_labels("agent"),
            "ports": _ports(ctx, agent.grpc_port, agent.metrics_port),
        },
    }


def build(ctx: ClusterContext) -> list[Obj]:
    return [controller_service(ctx), agents_service(ctx)]


KIND = ChildKind("service", lambda caps: SERVICE, build, phase=0)
