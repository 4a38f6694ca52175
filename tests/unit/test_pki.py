"""Workload identities (dualpath_common.pki) and identity directories (tls.IdentityDir)."""

from __future__ import annotations

import datetime
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from dualpath_common import pki, tls
from hypothesis import given
from hypothesis import strategies as st

from tests.support.certs import write_tls_secret

LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.new_ca("test CA", valid_days=10)


def test_spiffe_id_and_dns_name_formats():
    assert pki.spiffe_id("team-a", "dp1", "agent") == "spiffe://dualpath.io/ns/team-a/dpc/dp1/agent"
    assert pki.role_dns_name("controller") == "controller.dualpath.internal"
    with pytest.raises(pki.PkiError, match="unknown role"):
        pki.spiffe_id("ns", "c", "admin")
    with pytest.raises(pki.PkiError, match="unknown role"):
        pki.role_dns_name("root")
    with pytest.raises(pki.PkiError, match="DNS labels"):
        pki.spiffe_id("Bad_NS", "c", "agent")


@given(LABEL, LABEL, st.sampled_from(pki.ROLES))
def test_parse_inverts_spiffe_id(namespace, cluster, role):
    identity = pki.parse_spiffe_id(pki.spiffe_id(namespace, cluster, role))
    assert identity == pki.Identity(namespace, cluster, role)
    assert identity is not None and identity.uri == pki.spiffe_id(namespace, cluster, role)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/ns/a/dpc/b/agent",  # another trust domain
        "spiffe://dualpath.io/ns/a/dpc/b/admin",  # unknown role
        "spiffe://dualpath.io/ns/a/b/agent",  # malformed path
        "spiffe://dualpath.io/ns/a/dpc/b/agent/extra",
        "https://dualpath.io/ns/a/dpc/b/agent",
        "",
    ],
)
def test_parse_rejects_foreign_or_malformed_ids(uri):
    assert pki.parse_spiffe_id(uri) is None


def test_ca_is_a_ca_limited_to_end_entities(ca):
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert cert.subject == cert.issuer
    days = (pki.not_after(ca.cert_pem) - datetime.datetime.now(datetime.UTC)).days
    assert days in (9, 10)


def test_issued_certificate_carries_identity_names_and_both_usages(ca):
    cert_pem, key_pem = pki.issue(
        ca, "agent", "team-a", "dp1", dns_names=["node-1.example"], ips=["10.0.0.7", "::1"]
    )
    assert b"PRIVATE KEY" in key_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://dualpath.io/ns/team-a/dpc/dp1/agent"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["agent.dualpath.internal", "node-1.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    remaining = pki.not_after(cert_pem) - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < remaining <= datetime.timedelta(days=30)
    assert pki.identity_of(cert_pem) == pki.Identity("team-a", "dp1", "agent")


def test_issue_refuses_bad_roles_and_addresses(ca):
    with pytest.raises(pki.PkiError):
        pki.issue(ca, "superuser", "ns", "c")
    with pytest.raises(pki.PkiError, match="bad IP SAN"):
        pki.issue(ca, "agent", "ns", "c", ips=["not-an-ip"])


def test_identity_dir_is_laid_out_like_a_tls_secret_and_loads(ca, tmp_path):
    cert_pem, key_pem = pki.issue(ca, "router", "ns", "c")
    directory = pki.write_identity_dir(tmp_path / "id", ca.cert_pem, cert_pem, key_pem)
    assert (directory / "ca.crt").read_bytes() == ca.cert_pem
    assert (directory / "tls.crt").read_bytes() == cert_pem
    assert stat.S_IMODE((directory / "tls.key").stat().st_mode) == 0o600
    assert not list(directory.glob(".*.tmp"))
    loaded = tls.IdentityDir.load(directory)
    assert loaded.identity == pki.Identity("ns", "c", "router")
    before = loaded.signature()
    pki.issue_identity_dir(ca, directory, "router", "ns", "c")  # a rotation
    assert loaded.signature() != before


def test_identity_dir_refuses_what_cannot_identify(ca, tmp_path):
    with pytest.raises(tls.TlsConfigError, match="not a directory"):
        tls.IdentityDir.load(tmp_path / "missing")
    plain = write_tls_secret(tmp_path / "plain", ["localhost"], ["127.0.0.1"])
    with pytest.raises(tls.TlsConfigError, match="URI SAN"):
        tls.IdentityDir.load(plain)
    mixed = pki.issue_identity_dir(ca, tmp_path / "mixed", "agent", "ns", "c")
    _, other_key = pki.issue(ca, "agent", "ns", "c")
    (mixed / "tls.key").write_bytes(other_key)
    with pytest.raises(tls.TlsConfigError, match="do not load as a pair"):
        tls.IdentityDir.load(mixed)


def test_the_choice_between_identity_and_insecure_is_explicit(ca, tmp_path):
    directory = pki.issue_identity_dir(ca, tmp_path / "id", "agent", "ns", "c")
    with pytest.raises(ValueError, match="--tls-dir DIR"):
        tls.identity_or_insecure(None, False, "agent")
    with pytest.raises(ValueError, match="exclude each other"):
        tls.identity_or_insecure(directory, True, "agent")
    assert tls.identity_or_insecure(None, True, "agent") is None
    identity = tls.identity_or_insecure(directory, False, "agent")
    assert identity is not None and identity.identity.role == "agent"
