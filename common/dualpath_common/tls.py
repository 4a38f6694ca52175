"""TLS for the gRPC endpoints (the traffic controller, and the agents and engines calling it).

Certificates come as PEM files, the way Kubernetes mounts a `kubernetes.io/tls` Secret:
a directory with tls.crt, tls.key and, when a CA signed the certificate, ca.crt. The
server presents tls.crt/tls.key; a client trusts the file or directory it is given (a
directory means its ca.crt, or tls.crt itself for a self-signed certificate). The name a
client dials must be in the certificate's subject alternative names.
"""

from __future__ import annotations

from pathlib import Path

import grpc

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


def server_credentials(cert_file: str | Path, key_file: str | Path) -> grpc.ServerCredentials:
    cert = read_pem(cert_file, "TLS certificate")
    key = read_pem(key_file, "TLS key")
    return grpc.ssl_server_credentials([(key, cert)])


def channel_credentials(trust: str | Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=read_pem(trust_file(trust), "TLS CA"))


def channel(target: str, trust: str | Path | None = None) -> grpc.Channel:
    """A blocking-API channel: TLS when `trust` names a CA file or Secret directory."""
    if trust is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, channel_credentials(trust))


def aio_channel(target: str, trust: str | Path | None = None) -> grpc.aio.Channel:
    """Like `channel`, for grpc.aio (binds to the running event loop)."""
    if trust is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, channel_credentials(trust))
