"""cert-manager Issuers and Certificates, when mTLS is issued by cert-manager.

The chain, per cluster: a self-signed Issuer signs the cluster's CA Certificate (Secret
<cluster>-issuer-ca), a CA Issuer signs with it, and one Certificate per role writes the
same Secret the operator would (<cluster>-<role>-tls: ca.crt, tls.crt, tls.key) with the
role's SPIFFE URI SAN and DNS names. cert-manager renews them (renewBefore from the spec);
the components re-read their files, so nothing rolls.

Known cert-manager limit: a renewed *CA* is trusted by ca.crt only from the moment it
signs (cert-manager writes the issuing CA alone into ca.crt, with no overlap); pods that
have not re-read their files until then reject the new leaves for about a minute. The CA
lives a year and renews 120 days early, so this is one short event a year; trust-manager
bundles would remove it.
"""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.discovery import Capabilities
from dualpath_operator.kube import Obj, ResourceType
from dualpath_operator.mtls import (
    CA_RENEW_BEFORE_DAYS,
    CA_VALID_DAYS,
    LeafSpec,
    cert_manager_ca_secret_name,
    leaf_specs,
    resolve_mode,
)

API_VERSION = "cert-manager.io/v1"
ISSUER = ResourceType(API_VERSION, "Issuer", "issuers")
CERTIFICATE = ResourceType(API_VERSION, "Certificate", "certificates")
COMPONENT = "pki"
PRIVATE_KEY: Obj = {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}


def self_signed_issuer_name(cluster: str) -> str:
    return f"{cluster}-selfsigned"


def ca_issuer_name(cluster: str) -> str:
    return f"{cluster}-ca"


def ca_certificate_name(cluster: str) -> str:
    return f"{cluster}-ca"


def go_duration(days: float) -> str:
    """A Go duration cert-manager accepts, in whole minutes."""
    return f"{max(1, round(days * 24 * 60))}m"


def in_use(ctx: ClusterContext) -> bool:
    mode = resolve_mode(ctx.spec.security.mtls.issuer, ctx.capabilities)
    return mode == "cert-manager" and ctx.capabilities.cert_manager


def issuers(ctx: ClusterContext) -> list[Obj]:
    self_signed = {
        "apiVersion": API_VERSION,
        "kind": "Issuer",
        "metadata": ctx.metadata(self_signed_issuer_name(ctx.name), COMPONENT),
        "spec": {"selfSigned": {}},
    }
    ca = {
        "apiVersion": API_VERSION,
        "kind": "Issuer",
        "metadata": ctx.metadata(ca_issuer_name(ctx.name), COMPONENT),
        "spec": {"ca": {"secretName": cert_manager_ca_secret_name(ctx.name)}},
    }
    return [self_signed, ca]


def ca_certificate(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "Certificate",
        "metadata": ctx.metadata(ca_certificate_name(ctx.name), COMPONENT),
        "spec": {
            "isCA": True,
            "commonName": f"dualpath-ca.{ctx.name}"[:64],
            "secretName": cert_manager_ca_secret_name(ctx.name),
            "secretTemplate": {"labels": ctx.labels(COMPONENT)},
            "duration": go_duration(CA_VALID_DAYS),
            "renewBefore": go_duration(CA_RENEW_BEFORE_DAYS),
            "privateKey": dict(PRIVATE_KEY),
            "issuerRef": {
                "group": "cert-manager.io",
                "kind": "Issuer",
                "name": self_signed_issuer_name(ctx.name),
            },
        },
    }


def leaf_certificate(ctx: ClusterContext, leaf: LeafSpec) -> Obj:
    mtls = ctx.spec.security.mtls
    return {
        "apiVersion": API_VERSION,
        "kind": "Certificate",
        "metadata": ctx.metadata(leaf.secret_name, COMPONENT, leaf.role),
        "spec": {
            "secretName": leaf.secret_name,
            # Labels on the Secret cert-manager writes: the operator watches and adopts it.
            "secretTemplate": {"labels": ctx.labels(COMPONENT, leaf.role)},
            "uris": [leaf.spiffe_id],
            "dnsNames": list(leaf.dns_names),
            "duration": go_duration(mtls.certificate_days),
            "renewBefore": go_duration(mtls.certificate_days * mtls.renew_before_fraction),
            "usages": ["digital signature", "key agreement", "server auth", "client auth"],
            "privateKey": dict(PRIVATE_KEY),
            "issuerRef": {
                "group": "cert-manager.io",
                "kind": "Issuer",
                "name": ca_issuer_name(ctx.name),
            },
        },
    }


def certificates(ctx: ClusterContext) -> list[Obj]:
    leaves = [leaf_certificate(ctx, leaf) for leaf in leaf_specs(ctx.name, ctx.namespace)]
    return [ca_certificate(ctx), *leaves]


def issuer_resource(caps: Capabilities) -> ResourceType | None:
    return ISSUER if caps.cert_manager else None


def certificate_resource(caps: Capabilities) -> ResourceType | None:
    return CERTIFICATE if caps.cert_manager else None


def certificate_ready(obj: Obj | None) -> bool:
    """A Certificate's Ready condition, as cert-manager reports it."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


ISSUER_KIND = ChildKind(
    "issuer", issuer_resource, lambda ctx: issuers(ctx) if in_use(ctx) else [], prune=True
)
CERTIFICATE_KIND = ChildKind(
    "certificate",
    certificate_resource,
    lambda ctx: certificates(ctx) if in_use(ctx) else [],
    prune=True,
)
KINDS = (ISSUER_KIND, CERTIFICATE_KIND)
