"""RBAC rules the operator itself needs (for the chart's ClusterRole or Role).

Kept next to the code that uses them, and unit-tested against the child kinds, so a new
child kind cannot ship without its permission. Kubernetes RBAC also forbids granting a
permission one does not hold: the operator creates the controller's Role, so it needs
every verb that Role grants (pods/endpoints get/list/watch, configmaps get/watch).
"""

from __future__ import annotations

from typing import Any

from dualpath_operator.constants import GROUP, PLURAL

WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]
READ = ["get", "list", "watch"]

OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {
        "apiGroups": [GROUP],
        "resources": [f"{PLURAL}/status"],
        "verbs": ["get", "patch", "update"],
    },
    # Owner references with blockOwnerDeletion need this where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (e.g. OpenShift).
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["configmaps", "services", "serviceaccounts"], "verbs": WRITE},
    # The cluster CA and role certificates (mutual TLS): created, rotated, adopted from
    # cert-manager, deleted when the issuer changes.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": WRITE},
    {"apiGroups": [""], "resources": ["pods", "endpoints"], "verbs": READ},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
    {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments"], "verbs": WRITE},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": WRITE,
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": WRITE},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": WRITE},
    {
        "apiGroups": ["k8s.cni.cncf.io"],
        "resources": ["network-attachment-definitions"],
        "verbs": WRITE,
    },
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"], "verbs": WRITE},
    {"apiGroups": ["cert-manager.io"], "resources": ["issuers", "certificates"], "verbs": WRITE},
    # Gateway API Inference Extension: the InferencePool of the cluster's engines.
    {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": WRITE},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": READ,
    },
]


def allows(group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in OPERATOR_RULES
    )
