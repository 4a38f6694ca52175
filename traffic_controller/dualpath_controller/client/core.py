"""SessionCore: the Session streams of one grpc.aio channel and their correlation ids,
what ControllerSession and AsyncControllerSession share. Create and use it on one event
loop."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common import tls

from dualpath_controller.client.stream import SessionStream, Settable

# How long a Session Complete/Cancel may wait for a Schedule to share a message with. The
# controller's view of the engine is that much later to shrink: nothing next to decode
# times of seconds, and load reports correct it anyway.
RELEASE_LINGER_S = 0.002


@dataclass(frozen=True)
class SessionConfig:
    """A session's target and options (the constructor arguments of both session classes).
    `tls_ca` / `identity` as for ControllerClient; `streams` > 1 spreads operations
    round-robin over several streams; releases wait up to `release_linger_s` for a
    Schedule to share a message with."""

    target: str
    _: KW_ONLY
    streams: int = 1
    timeout_s: float = 5.0
    max_batch: int = 256
    release_linger_s: float = RELEASE_LINGER_S
    tls_ca: str | Path | None = None
    identity: tls.IdentityDir | None = None

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be >= 1, got {self.streams}")
        if not 1 <= self.max_batch <= 1024:
            raise ValueError(f"max_batch must be in [1, 1024], got {self.max_batch}")
        if not 0 <= self.release_linger_s <= 1:
            raise ValueError(f"release_linger_s must be in [0, 1], got {self.release_linger_s}")


class SessionCore:
    """Streams of one grpc.aio channel and the correlation ids: what both session classes
    share. Create and use it on one event loop."""

    def __init__(self, config: SessionConfig) -> None:
        self.max_batch = config.max_batch
        self.release_linger_s = config.release_linger_s
        target, tls_ca, identity = config.target, config.tls_ca, config.identity
        # Binds to the running loop. A new stream after a certificate rotation opens on a
        # new channel (see tls.RenewingChannel); open streams keep theirs.
        self._channels = tls.RenewingChannel(
            lambda: tls.aio_channel(target, tls_ca, identity=identity, server_role="controller"),
            identity,
        )
        self.channel = self._channels.current()[0]
        self.stub = pb_grpc.TrafficControllerStub(self.channel)
        self.streams: list[SessionStream | None] = [None] * config.streams
        self.next_id = itertools.count(1)  # next() is atomic under the GIL
        self.round_robin = 0
        self.streams_opened = 0
        self._messages_closed = 0  # counters of streams that ended
        self._operations_closed = 0

    def request(self, operation: dict[str, Any]) -> pb.SessionRequest:
        """A SessionRequest with a fresh correlation id (any thread)."""
        return pb.SessionRequest(correlation_id=next(self.next_id), **operation)

    def send(self, request: pb.SessionRequest, future: Settable) -> None:
        self.round_robin = (self.round_robin + 1) % len(self.streams)
        urgent = request.HasField("schedule")  # releases may wait for a ride
        self.stream(self.round_robin).add(request, future, urgent)

    def stream(self, slot: int) -> SessionStream:
        stream = self.streams[slot]
        if stream is None or stream.ended:
            if stream is not None:
                self._messages_closed += stream.messages_sent
                self._operations_closed += stream.operations_sent
            channel, renewed = self._channels.current()
            if renewed:
                self.channel, self.stub = channel, pb_grpc.TrafficControllerStub(channel)
            stream = SessionStream(self.stub, self.max_batch, slot, self.release_linger_s)
            self.streams[slot] = stream
            self.streams_opened += 1
        return stream

    def connect(self) -> None:
        for slot in range(len(self.streams)):
            self.stream(slot)

    def forget(self, correlation_id: int) -> None:
        for stream in self.streams:
            if stream is not None:
                stream.forget(correlation_id)

    def batching(self) -> tuple[int, int]:
        live = [s for s in self.streams if s is not None]
        return (
            self._messages_closed + sum(s.messages_sent for s in live),
            self._operations_closed + sum(s.operations_sent for s in live),
        )

    async def close(self, cancel: bool, timeout_s: float) -> None:
        streams = [s for s in self.streams if s is not None]
        for stream in streams:
            stream.cancel() if cancel else stream.finish()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in streams)), timeout_s)
        except TimeoutError:
            for stream in streams:
                stream.cancel()
        for channel in self._channels.all():
            await channel.close(None)


class SessionBase:
    """What both session classes expose about their streams."""

    def __init__(self, config: SessionConfig) -> None:
        self.target = config.target
        self.timeout_s = config.timeout_s
        self._closed = False

    _core: SessionCore

    def batching(self) -> tuple[int, int]:
        """(messages sent, operations sent) so far, over all streams."""
        return self._core.batching()

    @property
    def streams_opened(self) -> int:
        return self._core.streams_opened
