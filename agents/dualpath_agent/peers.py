"""gRPC stubs of peer agents (one channel per endpoint, mutual TLS) and the channel options
agents use between themselves."""

from __future__ import annotations

import threading

import grpc
from dualpath.v1 import agent_pb2_grpc
from dualpath_common import tls
from dualpath_common.tls import CHANNEL_OPTIONS

MAX_MESSAGE = 64 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    *CHANNEL_OPTIONS,  # a restarted peer is reached again within a second
]


class PeerClients:
    """gRPC stubs of peer agents, one channel per endpoint; mutual TLS with `identity`.
    A channel is made again when the identity files are rotated (tls.RenewingChannel)."""

    def __init__(self, identity: tls.IdentityDir | None = None) -> None:
        self._lock = threading.Lock()
        self.identity = identity
        self._channels: dict[str, tls.RenewingChannel[grpc.Channel]] = {}
        self._stubs: dict[str, tuple[grpc.Channel, agent_pb2_grpc.AgentStub]] = {}

    def stub(self, endpoint: str) -> agent_pb2_grpc.AgentStub:
        with self._lock:
            channels = self._channels.get(endpoint)
            if channels is None:
                channels = self._channels[endpoint] = tls.RenewingChannel(
                    lambda: tls.channel(
                        endpoint, identity=self.identity, server_role="agent", options=GRPC_OPTIONS
                    ),
                    self.identity,
                )
            channel = channels.current()[0]
            cached = self._stubs.get(endpoint)
            if cached is None or cached[0] is not channel:
                cached = self._stubs[endpoint] = (channel, agent_pb2_grpc.AgentStub(channel))
            return cached[1]

    def close(self) -> None:
        with self._lock:
            for channels in self._channels.values():
                for channel in channels.all():
                    channel.close()
            self._channels.clear()
            self._stubs.clear()
