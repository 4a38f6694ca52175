"""Tenant isolation in the KV store: the request's cache salt (pure functions).

Blocks are addressed by a hash chain whose root folds in the model's namespace and the
request's cache salt (`dualpath_agent.blockhash.root_hash`): requests with different salts
share no block, so one tenant can neither hit (and time) nor read nor overwrite another's
cached prompts. The salt is vLLM's own `cache_salt` body field, which also salts vLLM's
prefix cache inside each engine. The router checks it with vLLM's rules (so an engine never
refuses it after the request was scheduled), hashes the prompt's chain under it for its
Lookup, and sends it to the prefill and decode engines, whose connectors hash the same chain.

A client-chosen salt isolates only tenants that keep their salts secret. With a tenant
header (`--tenant-header X-Tenant-Id --tenant-secret-file FILE`), the router derives the
salt itself: HMAC-SHA256 of the tenant id (and of the client's own `cache_salt`, if any,
which then partitions the tenant's cache further) under the router's secret. A tenant
cannot produce another tenant's salt without the secret. The header must be set by a
trusted front (an authenticating gateway) and is then required on every request: a request
without it would share the unsalted cache.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dualpath_router.errors import bad_request

FIELD = "cache_salt"
# vLLM 0.32's own limits (vllm.entrypoints.generate.base.protocol.validate_cache_salt).
MAX_SALT_CHARS = 128
FORBIDDEN_CHARS = frozenset("@/\\\x00")
MAX_TENANT_CHARS = 256
# Derived salts: "t-" + the HMAC in URL-safe base64 (no '/', no padding): 45 characters.
DERIVED_PREFIX = "t-"
MIN_SECRET_BYTES = 16


def check_cache_salt(value: object) -> str | None:
    """The body's `cache_salt` (None when absent), or RouterError(400) naming it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"must be a string, got {type(value).__name__}", FIELD)
    if not value:
        raise bad_request("must not be empty (leave it out for no salt)", FIELD)
    if len(value) > MAX_SALT_CHARS:
        raise bad_request(
            f"is {len(value)} characters, more than the limit of {MAX_SALT_CHARS}", FIELD
        )
    bad = sorted(FORBIDDEN_CHARS.intersection(value))
    if bad:
        raise bad_request(
            f"must not contain {', '.join(repr(c) for c in bad)} ('@', '/', '\\' and NUL are"
            " reserved)",
            FIELD,
        )
    return value


@dataclass(frozen=True)
class TenantSalts:
    """Salts derived from a tenant header under the router's secret."""

    header: str
    secret: bytes

    def __post_init__(self) -> None:
        if not self.header:
            raise ValueError("tenant header name must not be empty")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"tenant secret must be at least {MIN_SECRET_BYTES} bytes, got {len(self.secret)}"
            )

    @classmethod
    def from_file(cls, header: str, secret_file: Path) -> TenantSalts:
        """The secret is the file's bytes, surrounding whitespace stripped (a Secret mount)."""
        return cls(header, secret_file.read_bytes().strip())

    def salt(self, tenant: str, client_salt: str | None) -> str:
        """HMAC-SHA256(secret, len || tenant || len || client salt), URL-safe base64.
        Length prefixes: no two (tenant, client salt) pairs hash the same input."""
        mac = hmac.new(self.secret, digestmod=hashlib.sha256)
        for part in (tenant.encode(), (client_salt or "").encode()):
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        return DERIVED_PREFIX + base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def resolve(self, headers: Mapping[str, str], client_salt: str | None) -> str:
        """The request's salt, or RouterError(400) when the tenant header is missing.
        `headers` looks names up case-insensitively (Starlette's Headers)."""
        tenant = (headers.get(self.header) or "").strip()
        if not tenant:
            raise bad_request(
                "is required: this router isolates tenants by it", f"header {self.header}"
            )
        if len(tenant) > MAX_TENANT_CHARS:
            raise bad_request(
                f"is {len(tenant)} characters, more than the limit of {MAX_TENANT_CHARS}",
                f"header {self.header}",
            )
        return self.salt(tenant, client_salt)
