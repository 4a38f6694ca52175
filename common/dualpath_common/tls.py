"""TLS for the gRPC endpoints (the traffic controller, and the agents and engines calling it).

Certificates come as PEM files, the way Kubernetes mounts a `kubernetes.io/tls` Secret:
a directory with tls.crt, tls.key and, when a CA signed the certificate, ca.crt. The
server presents tls.crt/tls.key; a client trusts the file or directory it is given (a
directory means its ca.crt, or tls.crt itself for a self-signed certificate). The name a
client dials must be in the certificate's subject alternative names. The server re-reads
its pair when the files change (ReloadingServerCertificate).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

log = logging.getLogger("dualpath.tls")

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or not PEM; the message names the file."""


def read_pem(path: str | Path, what: str) -> bytes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{what} {path}: not a PEM file")
    return data


def trust_file(path: str | Path) -> Path:
    """The CA bundle a client trusts: the file itself, or in a mounted Secret directory its
    ca.crt, else its tls.crt (a self-signed certificate is its own CA)."""
    path = Path(path)
    if path.is_dir():
        for name in (CA_FILE, CERT_FILE):
            if (path / name).is_file():
                return path / name
        raise TlsConfigError(f"TLS directory {path}: has neither {CA_FILE} nor {CERT_FILE}")
    return path


def _check_pair(cert_file: Path, key_file: Path) -> None:
    """The key must belong to the certificate (a pair half-way through a rotation does not)."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"TLS certificate {cert_file} and key {key_file} do not load as a pair ({exc})"
        ) from None


class ReloadingServerCertificate:
    """The server's certificate and key, read again when their files change: cert-manager
    renewals and Secret edits reach a pod as swapped files (the kubelet's atomic symlink
    flip), and a restart must not be needed to serve the new certificate. gRPC asks on
    each new connection's handshake; open connections keep theirs. A pair that does not
    load (mid-rotation, a mismatched key) keeps the current one and is reported."""

    def __init__(
        self,
        cert_file: str | Path,
        key_file: str | Path,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.on_change = on_change or (lambda _outcome: None)
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._initial = self._load()  # a bad pair at start is an error that names the files

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return tuple(
                (st.st_ino, st.st_mtime_ns, st.st_size)
                for st in (self.cert_file.stat(), self.key_file.stat())
            )
        except OSError:
            return ()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = read_pem(self.cert_file, "TLS certificate")
        key = read_pem(self.key_file, "TLS key")
        _check_pair(self.cert_file, self.key_file)
        return grpc.ssl_server_certificate_configuration([(key, cert)])

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate_configuration_fetcher: None keeps the current certificate."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return None
            try:
                config = self._load()
            except TlsConfigError as exc:
                log.warning("TLS certificate not reloaded", extra={"error": str(exc)})
                self.on_change("rejected")
                return None
            finally:
                self._signature = signature  # report a bad pair once, not per handshake
            log.info("TLS certificate reloaded", extra={"cert_file": str(self.cert_file)})
            self.on_change("reloaded")
            return config

    def credentials(self) -> grpc.ServerCredentials:
        # grpc documents None as "keep the current one"; grpc-stubs types it without None.
        return grpc.dynamic_ssl_server_credentials(self._initial, self.fetch)  # type: ignore[arg-type]


def channel_credentials(trust: str | Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=read_pem(trust_file(trust), "TLS CA"))


# A restarted controller is reached again within a second: gRPC's default reconnect
# backoff (1 s, growing to 120 s) would keep callers failing fast long after it is back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel(target: str, trust: str | Path | None = None) -> grpc.Channel:
    """A blocking-API channel: TLS when `trust` names a CA file or Secret directory."""
    if trust is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, channel_credentials(trust), options=CHANNEL_OPTIONS)


def aio_channel(target: str, trust: str | Path | None = None) -> grpc.aio.Channel:
    """Like `channel`, for grpc.aio (binds to the running event loop)."""
    if trust is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, channel_credentials(trust), options=CHANNEL_OPTIONS)
