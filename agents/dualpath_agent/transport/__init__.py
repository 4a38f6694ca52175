"""Moving bytes: NIXL (UCX to peers, POSIX for files) or an explicitly chosen fallback.

- `base`: the interfaces (PeerTransport, StorageReader, PendingTransfer, LayerWrites),
  TransferError / TransferRejected / ShortFile, descriptors and peer notifications.
- `nixl`: NixlRuntime, NixlPeerTransport (UCX), NixlPosixReader (O_DIRECT block files).
- `fallback`: SocketPeerTransport (the TCP wire protocol) and PreadReader, used only where
  NIXL cannot load and never silently.
- `qos`: QosConfig and apply_qos (UCX IB traffic class / SL, IP_TOS for sockets).
- `selection`: select_transports picks the data plane.

The names other packages use are re-exported here (`from dualpath_agent.transport import X`).
"""

from dualpath_agent.transport.base import (
    Desc,
    FileRead,
    LayerWrites,
    NotificationBox,
    PeerTransport,
    PendingTransfer,
    ShortFile,
    StorageReader,
    TransferError,
    TransferRejected,
    release_logged,
)
from dualpath_agent.transport.fallback import PreadReader, SocketPeerTransport
from dualpath_agent.transport.nixl import NixlPeerTransport, NixlPosixReader, NixlRuntime
from dualpath_agent.transport.qos import QosConfig, apply_qos
from dualpath_agent.transport.selection import Transports, select_transports

__all__ = [
    "Desc",
    "FileRead",
    "LayerWrites",
    "NixlPeerTransport",
    "NixlPosixReader",
    "NixlRuntime",
    "NotificationBox",
    "PeerTransport",
    "PendingTransfer",
    "PreadReader",
    "QosConfig",
    "ShortFile",
    "SocketPeerTransport",
    "StorageReader",
    "TransferError",
    "TransferRejected",
    "Transports",
    "apply_qos",
    "release_logged",
    "select_transports",
]
