"""The operator-issued CA and role-certificate Secrets (pure builders).

Unlike the other children, their content is not a function of the spec (keys are random,
certificates carry dates), so they are not re-applied on every reconcile: `issuance.py`
decides from what is stored (`renewal.py`) and writes one only when it must change. They
carry the usual labels and owner reference, so deleting the cluster deletes them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from dualpath_common.pki import CA_FILE, CERT_FILE, KEY_FILE

from dualpath_operator.children.common import ClusterContext
from dualpath_operator.kube import Obj, ResourceType
from dualpath_operator.mtls import LeafSpec, ca_secret_name

SECRET = ResourceType("v1", "Secret", "secrets")
COMPONENT = "pki"


def _encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}


def ca_secret(
    ctx: ClusterContext, data: Mapping[str, bytes], annotations: Mapping[str, str] | None = None
) -> Obj:
    """The CA (Opaque: ca.crt and ca.key, plus next.*/retired.crt while rotating). Only the
    operator reads it: no pod mounts the CA key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": ctx.metadata(
            ca_secret_name(ctx.name), COMPONENT, annotations=dict(annotations or {})
        ),
        "data": _encode(data),
    }


def leaf_secret(
    ctx: ClusterContext, leaf: LeafSpec, cert_pem: bytes, key_pem: bytes, bundle: bytes
) -> Obj:
    """One role's identity, shaped like cert-manager's output (kubernetes.io/tls with
    ca.crt), so pods mount it the same way whoever issued it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": ctx.metadata(leaf.secret_name, COMPONENT, leaf.role),
        "data": _encode({CA_FILE: bundle, CERT_FILE: cert_pem, KEY_FILE: key_pem}),
    }
