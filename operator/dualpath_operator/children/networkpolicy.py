"""NetworkPolicies for the agents and the traffic controller: their ports accept traffic
only from this cluster's own pods (agents, controller, and the engines and routers
labelled dualpath.io/cluster=<name> in the same namespace), from spec.networkPolicy
.clientsFrom, and, on the metrics port, from spec.networkPolicy.metricsFrom (the scrapers).

Only ingress is policed: egress rules would have to list DNS, the API server and every
engine, and buy little for a component that only calls its own peers.

Host-network agents: NetworkPolicy does not apply to pods on the node's network on most
CNIs, and their traffic arrives from node addresses that no pod selector matches. So with
spec.agent.hostNetwork there is no agent policy (it would police nothing), and the
controller's gRPC port is open to any source (the agents could not reach it otherwise);
only its metrics port stays restricted. Kubelet probes come from the node itself, which
common CNIs (Calico, Cilium, Antrea, kube-router) always let through.
"""

from __future__ import annotations

from dualpath_operator.api import LabelSelector, NetworkPolicyPeer
from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.constants import LABEL_CLUSTER
from dualpath_operator.kube import Obj, ResourceType

NETWORK_POLICY = ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")


def label_selector(selector: LabelSelector) -> Obj:
    out: Obj = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        exprs = []
        for e in selector.match_expressions:
            expr: Obj = {"key": e.key, "operator": e.operator}
            if e.values:
                expr["values"] = list(e.values)
            exprs.append(expr)
        out["matchExpressions"] = exprs
    return out


def peer(p: NetworkPolicyPeer) -> Obj:
    out: Obj = {}
    if p.namespace_selector is not None:
        out["namespaceSelector"] = label_selector(p.namespace_selector)
    if p.pod_selector is not None:
        out["podSelector"] = label_selector(p.pod_selector)
    return out


def cluster_clients(ctx: ClusterContext) -> list[Obj]:
    """This cluster's pods in its namespace (the operator labels agents and controller
    with dualpath.io/cluster; engines and routers carry the same label), then clientsFrom."""
    own = {"podSelector": {"matchLabels": {LABEL_CLUSTER: ctx.name}}}
    return [own, *(peer(p) for p in ctx.spec.network_policy.clients_from)]


def tcp(port: int) -> Obj:
    return {"protocol": "TCP", "port": port}


def metrics_rule(ctx: ClusterContext, port: int) -> list[Obj]:
    if not ctx.spec.monitoring.metrics:
        return []
    scrapers = [peer(p) for p in ctx.spec.network_policy.metrics_from]
    return [{"from": scrapers, "ports": [tcp(port)]}] if scrapers else []


def _policy(ctx: ClusterContext, name: str, component: str, ingress: list[Obj]) -> Obj:
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": ctx.metadata(name, component),
        "spec": {
            "podSelector": {"matchLabels": ctx.selector_labels(component)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def agents_policy(ctx: ClusterContext) -> Obj:
    agent = ctx.spec.agent
    # No port list for the cluster's own pods: besides gRPC, agents and engines move KV
    # over NIXL/UCX (and the socket fallback) on ports chosen at run time.
    ingress = [{"from": cluster_clients(ctx)}, *metrics_rule(ctx, agent.metrics_port)]
    return _policy(ctx, f"{ctx.name}-agents", "agent", ingress)


def controller_policy(ctx: ClusterContext) -> Obj:
    ctl = ctx.spec.traffic_controller
    grpc: Obj = {"ports": [tcp(ctl.port)]}
    if not ctx.spec.agent.host_network:
        grpc["from"] = cluster_clients(ctx)
    ingress = [grpc, *metrics_rule(ctx, ctl.metrics_port)]
    return _policy(ctx, ctx.controller_name, "controller", ingress)


def build(ctx: ClusterContext) -> list[Obj]:
    if not ctx.spec.network_policy.enabled:
        return []
    out = [controller_policy(ctx)]
    if not ctx.spec.agent.host_network:
        out.insert(0, agents_policy(ctx))
    return out


# Phase 0: in place before the first pod starts. Pruned: the opt-out (and hostNetwork)
# removes what an earlier spec created.
KIND = ChildKind("networkpolicy", lambda caps: NETWORK_POLICY, build, prune=True, phase=0)
