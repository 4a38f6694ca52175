"""Mutual TLS from the operator, against a real API server + controller-manager (v1.20).

The operator (a real `dualpath operator` subprocess with exactly the chart's permissions)
issues a per-cluster CA and one certificate per role into Secrets, mounts them into the
pods, re-issues a certificate that is close to expiry, and — once cert-manager's CRDs
exist (only the CRDs: no cert-manager runs here) — creates the cert-manager Issuer chain
and Certificates instead, adopting the Secrets cert-manager writes. Deleting the cluster
garbage-collects all of it.

The tests share one operator and one namespace and run in file order.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dualpath_common import pki
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_operator_cluster import (
    CRD_FILE,
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    Operator,
    least_privilege_kubeconfig,
    tear_down,
)
from tests.support.crds import install_crd, simple_crd
from tests.support.wait import wait_for

ROLES = ("agent", "controller", "router", "engine")
CM_GROUP = "cert-manager.io"


@pytest.fixture(scope="module")
def env(kube, tmp_path_factory) -> Iterator[tuple[Cluster, Operator]]:
    api = kube.api_client()
    install_crd(client.ApiextensionsV1Api(api), yaml.safe_load(CRD_FILE.read_text()))
    ns = f"pki-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(api, ns, tag=ns)
    log_dir = tmp_path_factory.mktemp("operator-pki-logs")
    kubeconfig = least_privilege_kubeconfig(api, kube.kubeconfig, ns, log_dir / "kubeconfig")
    op = Operator(kubeconfig, ns, log_dir, "op-pki")
    try:
        wait_for("operator leader and ready", lambda: "leader" in op.readyz(), timeout=60)
        yield cluster, op
    finally:
        tear_down(api, ns, [op])


def secret(cluster: Cluster, name: str) -> dict[str, Any] | None:
    try:
        obj = cluster.core.read_namespaced_secret(name, cluster.ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cluster.raw(obj)


def data(obj: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def secrets_of(cluster: Cluster, name: str) -> dict[str, dict[str, Any]] | None:
    names = [f"{name}-ca", *(f"{name}-{role}-tls" for role in ROLES)]
    found = {n: secret(cluster, n) for n in names}
    if any(obj is None or not obj.get("data") for obj in found.values()):
        return None
    return {n: obj for n, obj in found.items() if obj is not None}


def forge(
    ca_cert: bytes, ca_key: bytes, role: str, ns: str, cluster: str, start: dt.datetime, days: int
) -> tuple[bytes, bytes]:
    """A correctly named certificate from the cluster's CA, with dates of our choosing
    (pki.issue always starts now): what the operator finds once time has passed."""
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.UniformResourceIdentifier(pki.spiffe_id(ns, cluster, role)),
        x509.DNSName(pki.role_dns_name(role)),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, role)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(signer, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --- operator-issued -----------------------------------------------------------------------


def test_operator_issues_a_ca_and_role_certificates_and_mounts_them(env):
    cluster, _ = env
    cluster.create("gamma")
    found = wait_for(
        "CA and role Secrets of gamma", lambda: secrets_of(cluster, "gamma"), timeout=30
    )
    ca = found["gamma-ca"]
    assert ca["type"] == "Opaque" and sorted(data(ca)) == ["ca.crt", "ca.key"]
    ca_cert = data(ca)["ca.crt"]
    uid = cluster.get("gamma")["metadata"]["uid"]
    for role in ROLES:
        obj = found[f"gamma-{role}-tls"]
        assert obj["type"] == "kubernetes.io/tls"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid
        d = data(obj)
        assert d["ca.crt"] == ca_cert
        cert = x509.load_pem_x509_certificate(d["tls.crt"])
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://dualpath.io/ns/{cluster.ns}/dpc/gamma/{role}"]
        assert pki.role_dns_name(role) in san.get_values_for_type(x509.DNSName)
    ctl_san = x509.load_pem_x509_certificate(data(found["gamma-controller-tls"])["tls.crt"])
    dns = ctl_san.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"gamma-controller.{cluster.ns}.svc" in dns.get_values_for_type(x509.DNSName)
    assert ca["metadata"]["ownerReferences"][0]["uid"] == uid

    # The pods mount their role's Secret read-only and run with --tls-dir.
    ds = wait_for("agent DaemonSet", lambda: cluster.daemonset("gamma-prefill-agent"), timeout=30)
    ds = ds["spec"]["template"]["spec"]
    dep = wait_for(
        "controller Deployment",
        lambda: cluster.raw(
            cluster.apps.read_namespaced_deployment("gamma-controller", cluster.ns)
        ),
        timeout=30,
    )
    for pod, name in (
        (ds, "gamma-agent-tls"),
        (dep["spec"]["template"]["spec"], "gamma-controller-tls"),
    ):
        (volume,) = [v for v in pod["volumes"] if v["name"] == "mtls"]
        assert volume["secret"]["secretName"] == name and volume["secret"]["defaultMode"] == 0o440
        container = pod["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "mtls")
        assert mount["readOnly"] and mount["mountPath"] == "/etc/dualpath-mtls"
        assert container["args"][container["args"].index("--tls-dir") + 1] == "/etc/dualpath-mtls"

    cond = cluster.wait_condition("gamma", "CertificatesReady", "True", "OperatorIssued")
    assert "auto" in cond["message"] and "next renewal at" in cond["message"]


def test_a_near_expiry_or_deleted_certificate_is_reissued_without_rolling_pods(env):
    cluster, op = env
    ca = data(secret(cluster, "gamma-ca"))  # type: ignore[arg-type]
    generation = cluster.daemonset("gamma-prefill-agent")["metadata"]["generation"]
    now = dt.datetime.now(dt.UTC)
    # 29 of 30 days gone: under the default renew fraction (a third of the lifetime).
    cert, key = forge(
        ca["ca.crt"], ca["ca.key"], "agent", cluster.ns, "gamma", now - dt.timedelta(days=29), 30
    )
    cluster.core.patch_namespaced_secret(
        "gamma-agent-tls", cluster.ns, {"data": {"tls.crt": b64(cert), "tls.key": b64(key)}}
    )

    def reissued() -> bytes | None:
        current = data(secret(cluster, "gamma-agent-tls"))  # type: ignore[arg-type]
        return current["tls.crt"] if current["tls.crt"] != cert else None

    fresh = wait_for("the near-expiry agent certificate to be re-issued", reissued, timeout=30)
    left = pki.not_after(fresh) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < left <= dt.timedelta(days=30)
    assert data(secret(cluster, "gamma-ca"))["ca.crt"] == ca["ca.crt"]  # type: ignore[arg-type]

    # Expired, and a deleted Secret: both back, from the same CA.
    cert, key = forge(
        ca["ca.crt"], ca["ca.key"], "router", cluster.ns, "gamma", now - dt.timedelta(days=40), 30
    )
    cluster.core.patch_namespaced_secret(
        "gamma-router-tls", cluster.ns, {"data": {"tls.crt": b64(cert), "tls.key": b64(key)}}
    )
    cluster.core.delete_namespaced_secret("gamma-engine-tls", cluster.ns)
    wait_for(
        "the expired router certificate to be re-issued",
        lambda: data(secret(cluster, "gamma-router-tls") or {}).get("tls.crt") not in (None, cert),
        timeout=30,
    )
    engine = wait_for(
        "the engine Secret to return", lambda: secret(cluster, "gamma-engine-tls"), timeout=30
    )
    assert pki.identity_of(data(engine)["tls.crt"]) == pki.Identity(cluster.ns, "gamma", "engine")
    issued = "dualpath_operator_certificates_issued_total"
    assert op.metric(issued, 'cause="expiring",role="agent"') >= 1
    assert op.metric(issued, 'cause="expiring",role="router"') >= 1
    assert op.metric(issued, 'cause="missing",role="engine"') >= 2  # first issue, then deleted
    assert op.metric("dualpath_operator_ca_changes_total", 'action="create"') >= 1
    # A certificate change is not a spec change: the agents were not rolled.
    assert cluster.daemonset("gamma-prefill-agent")["metadata"]["generation"] == generation


def test_cert_manager_asked_for_without_its_crds_is_reported(env):
    cluster, _ = env
    cluster.create("eps", {"security": {"mtls": {"issuer": "cert-manager"}}})
    cond = cluster.wait_condition("eps", "CertificatesReady", "False", "CertManagerCRDMissing")
    assert "install cert-manager" in cond["message"]
    cluster.wait_condition("eps", "Degraded", "True", "CertificatesNotReady")
    assert secret(cluster, "eps-ca") is None and secret(cluster, "eps-agent-tls") is None


# --- cert-manager ----------------------------------------------------------------------------


def test_with_cert_manager_crds_issuers_and_certificates_are_created(env):
    cluster, _ = env
    ext = client.ApiextensionsV1Api(cluster.api)
    crds = [
        simple_crd(CM_GROUP, "certificates", "Certificate"),
        simple_crd(CM_GROUP, "issuers", "Issuer"),
    ]
    for crd in crds:
        install_crd(ext, crd)
    try:
        cluster.create("delta", {"security": {"mtls": {"certificateDays": 10}}})

        def get(plural: str, name: str) -> dict[str, Any]:
            return dict(
                cluster.co.get_namespaced_custom_object(CM_GROUP, "v1", cluster.ns, plural, name)
            )

        selfsigned = wait_for(
            "self-signed Issuer", lambda: get("issuers", "delta-selfsigned"), timeout=30
        )
        assert selfsigned["spec"] == {"selfSigned": {}}
        ca_issuer = wait_for("CA Issuer", lambda: get("issuers", "delta-ca"), timeout=30)
        assert ca_issuer["spec"] == {"ca": {"secretName": "delta-issuer-ca"}}
        ca_cert = wait_for("CA Certificate", lambda: get("certificates", "delta-ca"), timeout=30)
        assert ca_cert["spec"]["isCA"] is True
        assert ca_cert["spec"]["issuerRef"]["name"] == "delta-selfsigned"
        uid = cluster.get("delta")["metadata"]["uid"]
        for role in ROLES:
            cert = wait_for(
                f"{role} Certificate",
                lambda r=role: get("certificates", f"delta-{r}-tls"),
                timeout=30,
            )
            spec = cert["spec"]
            assert spec["secretName"] == f"delta-{role}-tls"
            assert spec["uris"] == [f"spiffe://dualpath.io/ns/{cluster.ns}/dpc/delta/{role}"]
            assert spec["dnsNames"][0] == pki.role_dns_name(role)
            assert spec["issuerRef"]["name"] == "delta-ca" and spec["duration"] == "14400m"
            assert cert["metadata"]["ownerReferences"][0]["uid"] == uid
        cond = cluster.wait_condition("delta", "CertificatesReady", "False", "CertManagerIssuing")
        assert "delta-agent-tls" in cond["message"]
        assert secret(cluster, "delta-ca") is None  # no operator CA in this mode

        # Play cert-manager: write the Secrets (no owner reference), mark Certificates Ready.
        ca = pki.new_ca("stand-in")
        for role in ROLES:
            cert_pem, key_pem = pki.issue(ca, role, cluster.ns, "delta")
            cluster.core.create_namespaced_secret(
                cluster.ns,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {"name": f"delta-{role}-tls"},
                    "data": {
                        "ca.crt": b64(ca.cert_pem),
                        "tls.crt": b64(cert_pem),
                        "tls.key": b64(key_pem),
                    },
                },
            )
        ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        for name in ["delta-ca", *(f"delta-{r}-tls" for r in ROLES)]:
            cluster.co.patch_namespaced_custom_object(
                CM_GROUP, "v1", cluster.ns, "certificates", name, ready
            )
        cluster.wait_condition(
            "delta", "CertificatesReady", "True", "CertManagerIssued", timeout=40
        )

        def adopted() -> bool:
            for role in ROLES:
                refs = (secret(cluster, f"delta-{role}-tls") or {})["metadata"].get(
                    "ownerReferences"
                ) or []
                if not any(r["uid"] == uid and r.get("controller") for r in refs):
                    return False
            return True

        wait_for("the Secrets cert-manager wrote to be adopted", adopted, timeout=40)

        # An explicit operator issuer stands even with cert-manager installed.
        cluster.patch_spec("delta", {"security": {"mtls": {"issuer": "operator"}}})
        cluster.wait_condition("delta", "CertificatesReady", "True", "OperatorIssued", timeout=40)
        wait_for(
            "delta's Certificates to be pruned",
            lambda: (
                not cluster.co.list_namespaced_custom_object(
                    CM_GROUP,
                    "v1",
                    cluster.ns,
                    "certificates",
                    label_selector="dualpath.io/cluster=delta",
                )["items"]
            ),
            timeout=30,
        )
        operator_ca = data(
            wait_for("delta's operator CA", lambda: secret(cluster, "delta-ca"), timeout=30)
        )
        agent = data(secret(cluster, "delta-agent-tls"))  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(agent["tls.crt"]).verify_directly_issued_by(
            x509.load_pem_x509_certificate(operator_ca["ca.crt"])
        )
    finally:
        for crd in crds:
            with contextlib.suppress(ApiException):
                ext.delete_custom_resource_definition(crd["metadata"]["name"])


def test_deleting_the_cluster_removes_its_ca_and_certificates(env):
    cluster, _ = env
    for name in ("gamma", "delta"):
        cluster.co.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, name)

    def gone() -> bool:
        items = cluster.core.list_namespaced_secret(cluster.ns).items
        return not [
            s.metadata.name for s in items if s.metadata.name.startswith(("gamma-", "delta-"))
        ]

    wait_for("the CA and role Secrets to be garbage-collected", gone, timeout=60)
