"""PodDisruptionBudget for the traffic controller, in the API version the cluster serves
(policy/v1 from Kubernetes 1.21, policy/v1beta1 before: chosen by discovery)."""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.discovery import Capabilities
from dualpath_operator.kube import Obj, ResourceType


def resource_for(caps: Capabilities) -> ResourceType | None:
    if not caps.pdb_api_version:
        return None
    return ResourceType(caps.pdb_api_version, "PodDisruptionBudget", "poddisruptionbudgets")


def controller_pdb(ctx: ClusterContext, api_version: str) -> Obj:
    budget = ctx.spec.traffic_controller.pod_disruption_budget
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": ctx.metadata(ctx.controller_name, "controller"),
        "spec": {
            "maxUnavailable": budget.max_unavailable,
            "selector": {"matchLabels": ctx.selector_labels("controller")},
        },
    }


def build(ctx: ClusterContext) -> list[Obj]:
    api_version = ctx.capabilities.pdb_api_version
    if not api_version or not ctx.spec.traffic_controller.pod_disruption_budget.enabled:
        return []
    return [controller_pdb(ctx, api_version)]


KIND = ChildKind("poddisruptionbudget", resource_for, build, prune=True, phase=1)
