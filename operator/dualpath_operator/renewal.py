"""When the operator-issued CA and role certificates must change (pure, clock passed in).

The reconcile reads the CA Secret and each role Secret, asks these functions what to do,
and does only the I/O (`issuance.py`). Reading certificates (dates, names, issuer, key
match) uses `cryptography`; issuing is `dualpath_common.pki`'s job.

CA rotation keeps every pod trusting every live certificate: a CA with less than
`CA_RENEW_BEFORE_DAYS` left gets a successor that is first only *published* (in every
trust bundle, `next.crt`) for `CA_PROPAGATION_SECONDS`, then promoted to sign; the old CA
stays in the bundles (`retired.crt`) until it expires. So a peer that has not yet re-read
its files still trusts what the others present, in both steps.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from dualpath_common.pki import CertificateAuthority

from dualpath_operator.mtls import CA_PROPAGATION_SECONDS, CA_RENEW_BEFORE_DAYS, LeafSpec

# Keys of the operator's CA Secret.
CA_CERT_KEY = "ca.crt"  # the CA that signs now
CA_KEY_KEY = "ca.key"
NEXT_CERT_KEY = "next.crt"  # its successor, published in bundles but not signing yet
NEXT_KEY_KEY = "next.key"
RETIRED_KEY = "retired.crt"  # former CAs, trusted until they expire
# When the successor was published (RFC 3339, in the CA Secret's annotations).
PUBLISHED_AT_ANNOTATION = "dualpath.io/next-ca-published-at"

_PEM_END = b"-----END CERTIFICATE-----"


# --- reading certificates ----------------------------------------------------------------


@dataclass(frozen=True)
class CertFacts:
    """What the decisions need from one certificate."""

    not_before: dt.datetime
    not_after: dt.datetime
    uris: frozenset[str]
    dns_names: frozenset[str]
    ips: frozenset[str]
    is_ca: bool

    def lifetime_left(self, now: dt.datetime) -> float:
        """Fraction of the certificate's lifetime still ahead (<= 0: expired)."""
        total = (self.not_after - self.not_before).total_seconds()
        return (self.not_after - now).total_seconds() / total if total > 0 else 0.0


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its own PEM block."""
    out = []
    for part in bundle.split(_PEM_END):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + _PEM_END + b"\n")
    return out


def _load(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def cert_facts(pem: bytes | None) -> CertFacts | None:
    """Facts of the first certificate in `pem`; None when there is none or it is garbage."""
    cert = _load(split_pem(pem)[0]) if pem and split_pem(pem) else None
    if cert is None:
        return None
    uris: set[str] = set()
    dns: set[str] = set()
    ips: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = set(san.get_values_for_type(x509.DNSName))
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertFacts(
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        uris=frozenset(uris),
        dns_names=frozenset(dns),
        ips=frozenset(ips),
        is_ca=is_ca,
    )


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem`'s key signed `cert_pem` (issuer name and signature both)."""
    cert, ca = _load(split_pem(cert_pem)[0] if split_pem(cert_pem) else b""), _load(ca_pem)
    if cert is None or ca is None:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the private key belongs to the (first) certificate."""
    cert = _load(split_pem(cert_pem)[0]) if split_pem(cert_pem) else None
    if cert is None:
        return False
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def secret_bytes(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A Secret's data, base64-decoded (undecodable entries left out)."""
    out: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except ValueError:
            continue
    return out


# --- the CA --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaState:
    """The operator's CA Secret, parsed."""

    active: CertificateAuthority | None
    next: CertificateAuthority | None = None
    next_published_at: dt.datetime | None = None
    retired: tuple[bytes, ...] = ()

    def to_data(self) -> dict[str, bytes]:
        assert self.active is not None
        data = {CA_CERT_KEY: self.active.cert_pem, CA_KEY_KEY: self.active.key_pem}
        if self.next is not None:
            data[NEXT_CERT_KEY] = self.next.cert_pem
            data[NEXT_KEY_KEY] = self.next.key_pem
        if self.retired:
            data[RETIRED_KEY] = b"".join(self.retired)
        return data


def _usable_ca(cert: bytes | None, key: bytes | None) -> CertificateAuthority | None:
    facts = cert_facts(cert)
    if cert is None or key is None or facts is None or not facts.is_ca:
        return None
    return CertificateAuthority(cert_pem=cert, key_pem=key) if key_matches(cert, key) else None


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ca_state(data: Mapping[str, bytes], annotations: Mapping[str, str] | None = None) -> CaState:
    nxt = _usable_ca(data.get(NEXT_CERT_KEY), data.get(NEXT_KEY_KEY))
    published = parse_time((annotations or {}).get(PUBLISHED_AT_ANNOTATION)) if nxt else None
    return CaState(
        active=_usable_ca(data.get(CA_CERT_KEY), data.get(CA_KEY_KEY)),
        next=nxt,
        next_published_at=published,
        retired=tuple(split_pem(data.get(RETIRED_KEY, b""))),
    )


CaAction = Literal["keep", "create", "publish-next", "promote", "drop-expired"]


@dataclass(frozen=True)
class CaPlan:
    action: CaAction
    reason: str


def _expired(pem: bytes, now: dt.datetime) -> bool:
    facts = cert_facts(pem)
    return facts is None or facts.not_after <= now


def plan_ca(state: CaState, now: dt.datetime) -> CaPlan:
    active = cert_facts(state.active.cert_pem) if state.active else None
    if state.active is None or active is None:
        return CaPlan("create", "no usable CA (missing, unreadable, or its key does not match)")
    if state.next is not None and state.next_published_at is None and active.not_after > now:
        # The publication time was lost (annotation removed): count from now.
        return CaPlan("publish-next", "successor CA without a publication time")
    if state.next is not None:
        published = state.next_published_at or now
        due = published + dt.timedelta(seconds=CA_PROPAGATION_SECONDS)
        if now >= due or active.not_after <= now:
            return CaPlan("promote", f"successor CA published since {format_time(published)}")
    elif active.not_after - now < dt.timedelta(days=CA_RENEW_BEFORE_DAYS):
        return CaPlan(
            "publish-next", f"CA expires {format_time(active.not_after)}: publishing its successor"
        )
    if any(_expired(pem, now) for pem in state.retired):
        return CaPlan("drop-expired", "a retired CA expired")
    return CaPlan("keep", f"CA valid until {format_time(active.not_after)}")


def apply_ca_plan(
    state: CaState,
    plan: CaPlan,
    new_ca: Callable[[], CertificateAuthority],
    now: dt.datetime,
) -> CaState:
    """The CA Secret's next content (`new_ca` is the only impure input)."""
    live = tuple(pem for pem in state.retired if not _expired(pem, now))
    if plan.action == "create":
        return CaState(active=new_ca())
    if plan.action == "publish-next":
        successor = state.next or new_ca()
        return replace(state, next=successor, next_published_at=now, retired=live)
    if plan.action == "promote":
        assert state.active is not None and state.next is not None
        old = state.active.cert_pem
        keep_old = () if _expired(old, now) else (old,)
        return CaState(active=state.next, retired=(*keep_old, *live))
    if plan.action == "drop-expired":
        return replace(state, retired=live)
    return state


def trust_bundle(state: CaState, now: dt.datetime) -> bytes:
    """Every CA a peer must accept now: the signing CA first, its published successor,
    then former CAs until they expire."""
    pems: list[bytes] = []
    if state.active is not None:
        pems.append(state.active.cert_pem)
    if state.next is not None:
        pems.append(state.next.cert_pem)
    pems += [pem for pem in state.retired if not _expired(pem, now)]
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems)


# --- role certificates ----------------------------------------------------------------------

LeafAction = Literal["keep", "issue", "rebundle"]
# Why, as a metric label: missing | invalid | ca-changed | names-changed | expiring | bundle | ok
LeafCause = Literal["missing", "invalid", "ca-changed", "names-changed", "expiring", "bundle", "ok"]


@dataclass(frozen=True)
class LeafPlan:
    action: LeafAction
    cause: LeafCause
    reason: str


def plan_leaf(
    data: Mapping[str, bytes] | None,
    want: LeafSpec,
    signing_ca_pem: bytes,
    bundle: bytes,
    renew_before_fraction: float,
    now: dt.datetime,
) -> LeafPlan:
    """Keep, re-issue, or only refresh the trust bundle of one role certificate."""
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return LeafPlan("issue", "missing", "missing")
    cert, key = data["tls.crt"], data["tls.key"]
    facts = cert_facts(cert)
    if facts is None:
        return LeafPlan("issue", "invalid", "unreadable certificate")
    if not key_matches(cert, key):
        return LeafPlan("issue", "invalid", "the key does not match the certificate")
    if not signed_by(cert, signing_ca_pem):
        return LeafPlan("issue", "ca-changed", "not signed by the current CA")
    if facts.uris != {want.spiffe_id} or facts.dns_names != set(want.dns_names) or facts.ips:
        return LeafPlan("issue", "names-changed", "names changed")
    left = facts.lifetime_left(now)
    if left <= 0:
        return LeafPlan("issue", "expiring", f"expired {format_time(facts.not_after)}")
    if left < renew_before_fraction:
        return LeafPlan(
            "issue",
            "expiring",
            f"expires {format_time(facts.not_after)} ({left:.0%} of its lifetime left)",
        )
    if data.get("ca.crt") != bundle:
        return LeafPlan("rebundle", "bundle", "trust bundle changed")
    return LeafPlan("keep", "ok", f"valid until {format_time(facts.not_after)}")


def renew_at(cert_pem: bytes, renew_before_fraction: float) -> dt.datetime | None:
    """When `plan_leaf` will start asking for a new certificate."""
    facts = cert_facts(cert_pem)
    if facts is None:
        return None
    return facts.not_after - (facts.not_after - facts.not_before) * renew_before_fraction
