"""TLS for the gRPC endpoints: mutual TLS between the components, and the controller's
server-only TLS for a user-provided certificate.

Certificates come as PEM files, the way Kubernetes mounts a `kubernetes.io/tls` Secret:
a directory with tls.crt, tls.key and, when a CA signed the certificate, ca.crt.

Mutual TLS (an identity directory, `--tls-dir`, see pki.py): the server presents tls.crt,
requires a client certificate and verifies it against ca.crt; the client presents its
tls.crt and verifies the server against ca.crt. Callers are then authorized by the SPIFFE
id in their certificate (authz.py). Clients dial agents by node IP and the controller by
Service name or IP, and an agent's certificate (one per role, shared by a DaemonSet)
cannot list every node's IP; so with an identity the client verifies the server's
certificate for the role's name instead (`grpc.ssl_target_name_override` =
pki.role_dns_name(server role), e.g. agent.dualpath.internal), which every certificate of
that role carries. What is verified is then "a workload of role R signed by this
cluster's CA", which is exactly what authorization needs; the CA is per cluster, so the
role name is not shared with other clusters.

Server-only TLS (`--tls-cert-file/--tls-key-file`, the controller's
`trafficController.tlsSecretName`): the server presents the pair; a client trusts the file
or directory it is given (a directory means its ca.crt, or tls.crt itself for a
self-signed certificate); the name it dials must be in the certificate's SANs. It
encrypts but does not authenticate callers.

Servers re-read their pair (and, with mutual TLS, ca.crt) when the files change
(ReloadingServerCertificate). A client channel presents the certificate it was made with,
so the clients make a new channel when their files change (RenewingChannel)."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from dualpath_common import pki

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
    load (mid-rotation, a mismatched key) keeps the current one and is reported.

    With `ca_file` (mutual TLS) clients must present a certificate signed by it; the CA
    bundle is re-read with the pair, so a CA rotation (old + new CA in one bundle) needs
    no restart either."""

    def __init__(
        self,
        cert_file: str | Path,
        key_file: str | Path,
        on_change: Callable[[str], None] | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.ca_file = None if ca_file is None else Path(ca_file)
        self.on_change = on_change or (lambda _outcome: None)
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._initial = self._load()  # a bad pair at start is an error that names the files

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        try:
            return _signature(self._files())
        except OSError:
            return ()

    def _files(self) -> list[Path]:
        files = [self.cert_file, self.key_file]
        return files if self.ca_file is None else [*files, self.ca_file]

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = read_pem(self.cert_file, "TLS certificate")
        key = read_pem(self.key_file, "TLS key")
        _check_pair(self.cert_file, self.key_file)
        roots = None if self.ca_file is None else read_pem(self.ca_file, "TLS CA")
        return grpc.ssl_server_certificate_configuration([(key, cert)], roots)

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
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self.ca_file is not None,
        )


def _signature(files: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced (the kubelet's symlink flip changes the inode)."""
    return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in (f.stat() for f in files))


@dataclass(frozen=True)
class IdentityDir:
    """A workload identity directory (ca.crt, tls.crt, tls.key; pki.write_identity_dir or a
    mounted Secret), checked when loaded: the files are PEM, the key matches the
    certificate, and the certificate carries a DualPath SPIFFE id (`identity`)."""

    path: Path
    identity: pki.Identity

    @property
    def ca_file(self) -> Path:
        return self.path / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.path / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @classmethod
    def load(cls, path: str | Path) -> IdentityDir:
        path = Path(path)
        if not path.is_dir():
            raise TlsConfigError(f"TLS identity directory {path}: not a directory")
        read_pem(path / CA_FILE, "TLS CA")
        cert = read_pem(path / CERT_FILE, "TLS certificate")
        read_pem(path / KEY_FILE, "TLS key")
        _check_pair(path / CERT_FILE, path / KEY_FILE)
        identity = pki.identity_of(cert)
        if identity is None:
            raise TlsConfigError(
                f"TLS certificate {path / CERT_FILE}: no spiffe://{pki.TRUST_DOMAIN}/... URI SAN"
            )
        return cls(path=path, identity=identity)

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """Changes when any of the three files is replaced; () while one is missing."""
        try:
            return _signature([self.ca_file, self.cert_file, self.key_file])
        except OSError:
            return ()

    def server_credentials(
        self, on_change: Callable[[str], None] | None = None
    ) -> grpc.ServerCredentials:
        """Mutual TLS: present tls.crt, require a client certificate signed by ca.crt."""
        return ReloadingServerCertificate(
            self.cert_file, self.key_file, on_change, ca_file=self.ca_file
        ).credentials()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Present tls.crt, trust ca.crt (read now: see the module docstring on rotation)."""
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_file, "TLS CA"),
            private_key=read_pem(self.key_file, "TLS key"),
            certificate_chain=read_pem(self.cert_file, "TLS certificate"),
        )


def load_identity(path: str | Path | None) -> IdentityDir | None:
    return None if path is None else IdentityDir.load(path)


INSECURE_HINT = (
    "pass --tls-dir DIR (mutual TLS with an identity directory: ca.crt, tls.crt, tls.key)"
    " or --insecure (plaintext, no caller authentication; local tests only)"
)


def identity_or_insecure(
    tls_dir: str | Path | None, insecure: bool, component: str
) -> IdentityDir | None:
    """The explicit choice every server and client process makes at start: an identity
    (mutual TLS) or, only when asked for, none. Neither is an error: a component that
    silently fell back to plaintext would expose the KV cache to anyone on the network."""
    if tls_dir is not None and insecure:
        raise ValueError("--tls-dir and --insecure exclude each other")
    if tls_dir is None and not insecure:
        raise ValueError(f"no gRPC identity: {INSECURE_HINT}")
    if insecure:
        log.warning(
            "gRPC without mutual TLS: callers are not authenticated (--insecure)",
            extra={"component": component},
        )
        return None
    identity = IdentityDir.load(tls_dir)  # type: ignore[arg-type]
    log.info(
        "gRPC identity loaded",
        extra={"component": component, "identity": identity.identity.uri, "dir": str(tls_dir)},
    )
    return identity


def channel_credentials(trust: str | Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=read_pem(trust_file(trust), "TLS CA"))


# A restarted controller is reached again within a second: gRPC's default reconnect
# backoff (1 s, growing to 120 s) would keep callers failing fast long after it is back.
# gRPC core reads min_reconnect_backoff_ms as the connect timeout of one attempt (TCP, TLS
# and HTTP/2 SETTINGS): at 100 ms a peer slowed by busy engines on a small machine failed
# calls with "timed out before receiving SETTINGS frame". A refused connect still fails at
# once and is retried after the (short) backoff.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 5_000),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


Options = Sequence[tuple[str, int | str]]
C = TypeVar("C")


class RenewingChannel(Generic[C]):
    """A client channel that is made again when its identity files are rotated.

    A channel presents the certificate it was made with on every (re)connection, and
    grpc's Python API cannot swap a channel's credentials, so a process that outlives its
    first certificate (they are renewed in place, without restarting pods) must make new
    channels. What matters is the next handshake, not the open connections: `current()`
    checks the files (a stat of three files, at most every `check_s`) and, when they
    changed, makes a new channel for the calls that follow. Retired channels stay open
    until close(), so calls in flight on them finish. Without an identity it is one
    channel for ever."""

    def __init__(
        self, make: Callable[[], C], identity: IdentityDir | None, check_s: float = 10.0
    ) -> None:
        self._make = make
        self.identity = identity
        self.check_s = check_s
        self._lock = threading.Lock()
        self._channel = make()
        self._signature = identity.signature() if identity is not None else ()
        self._checked = time.monotonic()
        self.retired: list[C] = []
        self.renewals = 0

    def current(self) -> tuple[C, bool]:
        """The channel to use now, and whether it is new since the last call."""
        if self.identity is None or time.monotonic() - self._checked < self.check_s:
            return self._channel, False
        with self._lock:
            self._checked = time.monotonic()
            signature = self.identity.signature()
            if not signature or signature == self._signature:
                return self._channel, False  # unchanged, or a swap half-way: keep what works
            try:
                channel = self._make()
            except TlsConfigError as exc:  # e.g. a key that does not load yet
                log.warning("TLS client identity not reloaded", extra={"error": str(exc)})
                return self._channel, False
            self._signature = signature
            self.retired.append(self._channel)
            self._channel = channel
            self.renewals += 1
            log.info("TLS client identity reloaded", extra={"dir": str(self.identity.path)})
            return channel, True

    def all(self) -> list[C]:
        """Every channel made (to close)."""
        return [self._channel, *self.retired]


def _client_setup(
    trust: str | Path | None,
    identity: IdentityDir | None,
    server_role: str | None,
    options: Options,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, int | str]]]:
    opts = list({**dict(CHANNEL_OPTIONS), **dict(options)}.items())  # `options` win
    if identity is not None:
        if server_role is None:
            raise ValueError("a mutual-TLS channel needs the server's role")
        # Verify the server as "role R of this cluster's CA", not by the address dialled:
        # see the module docstring.
        opts.append(("grpc.ssl_target_name_override", pki.role_dns_name(server_role)))
        return identity.channel_credentials(), opts
    if trust is not None:
        return channel_credentials(trust), opts
    return None, opts


def channel(
    target: str,
    trust: str | Path | None = None,
    *,
    identity: IdentityDir | None = None,
    server_role: str | None = None,
    options: Options = (),
) -> grpc.Channel:
    """A blocking-API channel: mutual TLS with `identity` (to a server of `server_role`),
    server-only TLS when `trust` names a CA file or Secret directory, else plaintext."""
    creds, opts = _client_setup(trust, identity, server_role, options)
    if creds is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, creds, options=opts)


def aio_channel(
    target: str,
    trust: str | Path | None = None,
    *,
    identity: IdentityDir | None = None,
    server_role: str | None = None,
    options: Options = (),
) -> grpc.aio.Channel:
    """Like `channel`, for grpc.aio (binds to the running event loop)."""
    creds, opts = _client_setup(trust, identity, server_role, options)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, creds, options=opts)
