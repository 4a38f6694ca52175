"""Identities, least privilege: agents get a ServiceAccount without an API token (they
never call the Kubernetes API); the controller may read its own config and discover agent
pods and endpoints in this namespace, nothing else."""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.kube import Obj, ResourceType

SERVICE_ACCOUNT = ResourceType("v1", "ServiceAccount", "serviceaccounts")
ROLE = ResourceType("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING = ResourceType("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")


def service_accounts(ctx: ClusterContext) -> list[Obj]:
    agent = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(ctx.agent_service_account, "agent"),
        "automountServiceAccountToken": False,
    }
    controller = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(ctx.controller_name, "controller"),
    }
    return [agent, controller]


def controller_role(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": ctx.metadata(ctx.controller_name, "controller"),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods", "endpoints"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [ctx.config_map_name],
                "verbs": ["get", "watch"],
            },
        ],
    }


def controller_role_binding(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": ctx.metadata(ctx.controller_name, "controller"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": ctx.controller_name,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": ctx.controller_name, "namespace": ctx.namespace}
        ],
    }


SERVICE_ACCOUNT_KIND = ChildKind(
    "serviceaccount", lambda caps: SERVICE_ACCOUNT, service_accounts, phase=0
)
ROLE_KIND = ChildKind("role", lambda caps: ROLE, lambda ctx: [controller_role(ctx)], phase=0)
ROLE_BINDING_KIND = ChildKind(
    "rolebinding", lambda caps: ROLE_BINDING, lambda ctx: [controller_role_binding(ctx)], phase=0
)
KINDS = (SERVICE_ACCOUNT_KIND, ROLE_KIND, ROLE_BINDING_KIND)
