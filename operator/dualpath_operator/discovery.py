"""What the API server offers, decided from its discovery document (GET /apis).

Kubernetes versions differ (policy/v1 PodDisruptionBudget exists from 1.21; the v1.20 test
server has only policy/v1beta1), and optional add-ons may be absent (Multus'
NetworkAttachmentDefinition CRD, the Prometheus Operator's ServiceMonitor CRD, cert-manager's
Certificate and Issuer CRDs, the Gateway API Inference Extension's InferencePool). The choice
is a pure function of the group list, so both branches are unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAD_GROUP = "k8s.cni.cncf.io"
MONITORING_GROUP = "monitoring.coreos.com"
CERT_MANAGER_GROUP = "cert-manager.io"
INFERENCE_GROUP = "inference.networking.k8s.io"


@dataclass(frozen=True)
class Capabilities:
    # apiVersion to use for PodDisruptionBudget ("" when the cluster serves none).
    pdb_api_version: str
    # Multus NetworkAttachmentDefinition CRD served (k8s.cni.cncf.io/v1).
    network_attachments: bool
    # Prometheus Operator ServiceMonitor CRD served (monitoring.coreos.com/v1).
    service_monitors: bool
    # cert-manager's Certificate and Issuer CRDs served (cert-manager.io/v1).
    cert_manager: bool = False
    # Gateway API Inference Extension's InferencePool CRD (inference.networking.k8s.io/v1).
    inference_pools: bool = False


def _group_versions(api_groups: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for group in api_groups.get("groups", []):
        out[group["name"]] = {v["version"] for v in group.get("versions", [])}
    return out


def capabilities_from_groups(
    api_groups: dict[str, Any], resources_by_group_version: dict[str, set[str]] | None = None
) -> Capabilities:
    """Decide from an APIGroupList (GET /apis). `resources_by_group_version` (optional,
    e.g. {"k8s.cni.cncf.io/v1": {"network-attachment-definitions"}}) narrows the add-on
    checks to the exact resource when the caller looked it up."""
    groups = _group_versions(api_groups)
    policy = groups.get("policy", set())
    if "v1" in policy:
        pdb = "policy/v1"
    elif "v1beta1" in policy:
        pdb = "policy/v1beta1"
    else:
        pdb = ""

    def served(group: str, version: str, plural: str) -> bool:
        if version not in groups.get(group, set()):
            return False
        if resources_by_group_version is None:
            return True
        return plural in resources_by_group_version.get(f"{group}/{version}", set())

    return Capabilities(
        pdb_api_version=pdb,
        network_attachments=served(NAD_GROUP, "v1", "network-attachment-definitions"),
        service_monitors=served(MONITORING_GROUP, "v1", "servicemonitors"),
        cert_manager=served(CERT_MANAGER_GROUP, "v1", "certificates")
        and served(CERT_MANAGER_GROUP, "v1", "issuers"),
        inference_pools=served(INFERENCE_GROUP, "v1", "inferencepools"),
    )
