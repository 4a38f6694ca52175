"""Workload identities for mutual TLS: a cluster CA and the certificates it issues.

Every DualPath process (agent, controller, engine, router, the operator, a CLI client)
proves who it is with an X.509 certificate whose URI SAN is a SPIFFE-style id naming its
namespace, DualPathCluster and role. Servers authorize callers by that id (see authz.py);
the role's DNS SAN (`agent.dualpath.internal`, ...) is the name clients verify the server
against, because agents are dialled by node IP and one certificate per role cannot list
every node (see tls.py). The operator issues these from one CA per DualPathCluster; the
local demo does the same with a throwaway CA in its workdir.

Identity directories look like a mounted `kubernetes.io/tls` Secret: ca.crt, tls.crt,
tls.key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("agent", "controller", "engine", "router", "operator", "client")

TRUST_DOMAIN = "dualpath.io"
DNS_SUFFIX = "dualpath.internal"

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

# A DNS label (RFC 1123), which is what Kubernetes namespaces and object names are.
_LABEL = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
_SPIFFE = re.compile(
    rf"^spiffe://{re.escape(TRUST_DOMAIN)}/ns/(?P<ns>{_LABEL})/dpc/(?P<dpc>{_LABEL})/(?P<role>[a-z]+)$"
)

# Backdating not_valid_before absorbs clock skew between the issuer and the verifier.
_BACKDATE = datetime.timedelta(minutes=5)


class PkiError(ValueError):
    """A bad role, name or certificate; the message says which."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate belongs to, parsed from its SPIFFE URI SAN."""

    namespace: str
    cluster: str
    role: str

    @property
    def uri(self) -> str:
        return spiffe_id(self.namespace, self.cluster, self.role)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's certificate and private key, PEM-encoded (what a CA Secret stores)."""

    cert_pem: bytes
    key_pem: bytes


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def spiffe_id(namespace: str, cluster: str, role: str) -> str:
    _check_role(role)
    uri = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/dpc/{cluster}/{role}"
    if not _SPIFFE.match(uri):
        raise PkiError(f"namespace {namespace!r} / cluster {cluster!r} are not DNS labels")
    return uri


def parse_spiffe_id(uri: str) -> Identity | None:
    """The identity in a SPIFFE URI, or None when it is not one of ours (another trust
    domain, a malformed path, an unknown role)."""
    match = _SPIFFE.match(uri)
    if match is None or match["role"] not in ROLES:
        return None
    return Identity(namespace=match["ns"], cluster=match["dpc"], role=match["role"])


def role_dns_name(role: str) -> str:
    _check_role(role)
    return f"{role}.{DNS_SUFFIX}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(common_name: str, valid_days: int = 365) -> CertificateAuthority:
    """A self-signed CA that may only sign end-entity certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a leaf signs handshakes and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(ca: CertificateAuthority) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as exc:
        raise PkiError(f"CA does not load: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an EC key")
    return cert, key


class IssueOptions(TypedDict, total=False):
    """issue()'s optional arguments, which issue_identity_dir() passes on (the defaults are
    issue's)."""

    dns_names: Sequence[str]
    ips: Sequence[str]
    valid_days: int


def issue(
    ca: CertificateAuthority,
    role: str,
    namespace: str,
    cluster: str,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    valid_days: int = 30,
) -> tuple[bytes, bytes]:
    """A certificate and key for `role` in namespace/cluster, signed by `ca`: (cert_pem,
    key_pem). SANs: the SPIFFE URI, role_dns_name(role), then dns_names and ips. Usable as
    both server and client certificate (every component is both)."""
    uri = spiffe_id(namespace, cluster, role)
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    dns = [role_dns_name(role), *(n for n in dns_names if n != role_dns_name(role))]
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(n) for n in dns]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise PkiError(f"bad IP SAN: {exc}") from None
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{role}.{cluster}.{namespace}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def not_after(cert_pem: bytes) -> datetime.datetime:
    """When the (first) certificate in cert_pem expires, timezone-aware UTC."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"certificate does not load: {exc}") from None
    return cert.not_valid_after_utc


def identity_of(cert_pem: bytes) -> Identity | None:
    """The SPIFFE identity in a certificate's URI SANs, or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        identity = parse_spiffe_id(uri)
        if identity is not None:
            return identity
    return None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Write-then-rename so a reloading server never reads half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_identity_dir(
    directory: Path, ca_bundle_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> Path:
    """Write ca.crt, tls.crt and tls.key (0600) into `directory`, like a mounted
    kubernetes.io/tls Secret; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / CA_FILE, ca_bundle_pem, 0o644)
    _write_atomic(directory / KEY_FILE, key_pem, 0o600)
    _write_atomic(directory / CERT_FILE, cert_pem, 0o644)
    return directory


def issue_identity_dir(
    ca: CertificateAuthority,
    directory: Path,
    role: str,
    namespace: str,
    cluster: str,
    **options: Unpack[IssueOptions],
) -> Path:
    """issue() and write_identity_dir() in one step (local runs and tests)."""
    cert, key = issue(ca, role, namespace, cluster, **options)
    return write_identity_dir(directory, ca.cert_pem, cert, key)
