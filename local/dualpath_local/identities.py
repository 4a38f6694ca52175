"""Throwaway mutual-TLS identities for a local run: the same mechanism as a cluster (one CA
per DualPathCluster, one identity directory per component, see dualpath_common.pki), with
a CA made in the run's workdir and dropped with it.

Layout under `<workdir>/pki/`: `ca.crt` and `ca.key` (0600), then one directory per
component (`agent-prefill-0/`, `controller/`, `router/`, `engine-decode-0/`, `driver/`)
holding ca.crt, tls.crt, tls.key. Every certificate also names localhost and 127.0.0.1,
so a tool that dials by address can verify it too.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dualpath_common import pki, tls

NAMESPACE = "local"
CLUSTER = "dualpath-local"
# A local run lasts hours at most; a day leaves room for a long `local up`.
VALID_DAYS = 1


@dataclass
class LocalIdentities:
    root: Path
    ca: pki.CertificateAuthority
    _issued: dict[str, Path] = field(default_factory=dict)
    # Agents start in parallel threads; each identity is issued once.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, root: Path) -> LocalIdentities:
        root.mkdir(parents=True, exist_ok=True)
        ca = pki.new_ca(f"dualpath local CA ({root})", valid_days=VALID_DAYS)
        (root / "ca.crt").write_bytes(ca.cert_pem)
        fd = os.open(root / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(ca.key_pem)
        return cls(root, ca)

    def directory(self, role: str, name: str) -> Path:
        """The identity directory of component `name` with `role`, issued on first use."""
        with self._lock:
            return self._directory(role, name)

    def _directory(self, role: str, name: str) -> Path:
        if name not in self._issued:
            self._issued[name] = pki.issue_identity_dir(
                self.ca,
                self.root / name,
                role,
                NAMESPACE,
                CLUSTER,
                dns_names=["localhost"],
                ips=["127.0.0.1"],
                valid_days=VALID_DAYS,
            )
        return self._issued[name]

    def identity(self, role: str, name: str) -> tls.IdentityDir:
        return tls.IdentityDir.load(self.directory(role, name))
