"""What mutual TLS asks of one cluster: which issuer, which certificates, which names.

Pure functions of the parsed spec and the API server's capabilities, shared by the
operator-issued path (`issuance.py`), the cert-manager children (`children/certmanager.py`),
the pod builders (mounts and flags) and status. Every role the operator knows gets one
certificate in a kubernetes.io/tls Secret `<cluster>-<role>-tls`; the operator mounts the
agent and controller ones into its own workloads, and the router and engine ones are there
for the pods that run those (the operator does not deploy them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dualpath_common.pki import role_dns_name, spiffe_id

from dualpath_operator.discovery import Capabilities

Mode = Literal["operator", "cert-manager"]

# The roles whose certificates the operator keeps, in a stable order.
LEAF_ROLES: tuple[str, ...] = ("agent", "controller", "router", "engine")
# The CA outlives every leaf by far, so a leaf never outlives its issuer: leaves live at
# most 90 days (the API's bound) and a CA is replaced when 120 days are left.
CA_VALID_DAYS = 365
CA_RENEW_BEFORE_DAYS = 120
# How long a new CA sits in every trust bundle before it signs anything: the kubelet
# refreshes mounted Secrets within about a minute, and the components re-read their files
# when they change; ten minutes leaves margin, and the old CA's 120 days left are plenty.
CA_PROPAGATION_SECONDS = 600.0
# Where the role's Secret is mounted in the operator's pods; `--tls-dir` points here.
MTLS_MOUNT_DIR = "/etc/dualpath-mtls"


def resolve_mode(issuer: str, caps: Capabilities) -> Mode:
    """`auto` means cert-manager when its CRDs are served, the operator otherwise; an
    explicit choice stands even when it cannot be met (status reports it)."""
    if issuer == "operator":
        return "operator"
    if issuer == "cert-manager":
        return "cert-manager"
    return "cert-manager" if caps.cert_manager else "operator"


def ca_secret_name(cluster: str) -> str:
    """The operator-issued CA (Opaque: ca.crt, ca.key and the rotation's extra keys)."""
    return f"{cluster}-ca"


def cert_manager_ca_secret_name(cluster: str) -> str:
    """cert-manager's CA Certificate writes here (kubernetes.io/tls): a different name
    from the operator's CA Secret, whose type (Opaque) cert-manager could not change."""
    return f"{cluster}-issuer-ca"


def leaf_secret_name(cluster: str, role: str) -> str:
    return f"{cluster}-{role}-tls"


@dataclass(frozen=True)
class LeafSpec:
    """One role certificate as the spec wants it."""

    role: str
    secret_name: str
    spiffe_id: str
    dns_names: tuple[str, ...]  # role_dns_name(role) first, then the extra names

    @property
    def extra_dns_names(self) -> tuple[str, ...]:
        return self.dns_names[1:]


def controller_dns_names(cluster: str, namespace: str) -> tuple[str, ...]:
    """Every name the controller's Service answers to in-cluster."""
    svc = f"{cluster}-controller"
    return (
        svc,
        f"{svc}.{namespace}",
        f"{svc}.{namespace}.svc",
        f"{svc}.{namespace}.svc.cluster.local",
    )


def leaf_specs(cluster: str, namespace: str) -> tuple[LeafSpec, ...]:
    out = []
    for role in LEAF_ROLES:
        extra = controller_dns_names(cluster, namespace) if role == "controller" else ()
        out.append(
            LeafSpec(
                role=role,
                secret_name=leaf_secret_name(cluster, role),
                spiffe_id=spiffe_id(namespace, cluster, role),
                dns_names=(role_dns_name(role), *extra),
            )
        )
    return tuple(out)
