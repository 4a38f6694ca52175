"""A small Python client for driving agents (demo, tests, benchmarks, tooling).

    from dualpath_agent.client import AgentClient, ReadPath
    from dualpath_agent.blockhash import block_chain
    from dualpath_agent.layout import BlockLayout
from dualpath_agent.messages import BlockLike, block_ref, layout_msg

    layout = BlockLayout(layers=4, block_tokens=64, bytes_per_token_layer=1024)
    chain = block_chain(token_ids, layout.block_tokens)
    with AgentClient(decode_ep) as de, AgentClient(prefill_ep) as pe:
        de.seed_synthetic(chain, layout)                       # or put_blocks(...)
        result = pe.load("req-1", chain, layout, ReadPath.DE_READ, decode_endpoint=decode_ep,
                         on_layer=lambda p: print("layer", p.layer, "ready"))
        print(result.elapsed_s, result.bytes_from_peer)

A channel is thread-safe: run many loads concurrently from a thread pool on one client.
Errors are grpc.RpcError with the agent's status code and a message naming the problem.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import grpc
from dualpath.v1 import agent_pb2, agent_pb2_grpc, traffic_controller_pb2
from dualpath_common import tls
from dualpath_common.tls import CHANNEL_OPTIONS

from dualpath_agent import kvgen
from dualpath_agent.blockfile import crc32c
from dualpath_agent.layout import BlockLayout
from dualpath_agent.messages import BlockLike, block_ref, layout_msg

CHUNK = 1 << 20
_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    # A restarted agent is reached again within a second (gRPC's default backoff grows
    # to 120 s).
    *CHANNEL_OPTIONS,
]


class LoadOptions(TypedDict, total=False):
    """load_stream()'s optional arguments, which load() passes on (the defaults are
    load_stream's)."""

    decode_endpoint: str
    de_read_fraction: float
    missed_tokens: int
    release_after_load: bool
    keep_for_merge: bool


class ReadPath(enum.IntEnum):
    PE_READ = traffic_controller_pb2.ReadPath.READ_PATH_PE_READ
    DE_READ = traffic_controller_pb2.ReadPath.READ_PATH_DE_READ
    SPLIT = traffic_controller_pb2.ReadPath.READ_PATH_SPLIT


@dataclass(frozen=True)
class LoadResult:
    request_id: str
    read_path: ReadPath
    bytes_total: int
    bytes_from_local_storage: int
    bytes_from_peer: int
    blocks_verified: int
    blocks_local: int
    blocks_remote: int
    elapsed_s: float
    region_address: int
    region_length: int
    region_layer_stride: int
    layers_seen: list[int]
    local_storage_read_s: float = 0.0
    remote_storage_read_s: float = 0.0
    peer_stream_s: float = 0.0
    # Decode-side blocks read from own storage because the decode agent failed, and why.
    fallback_blocks: int = 0
    fallback_reason: str = ""


def expected_region(
    blocks: Sequence[BlockLike], layout: BlockLayout, layer: int | None = None
) -> bytes:
    """The bytes a region loaded with synthetic (kvgen) blocks must hold: layer-major, the
    whole prefix or one layer. Lets any caller check a load byte for byte."""
    refs = [block_ref(b) for b in blocks]
    layers = range(layout.layers) if layer is None else [layer]
    return b"".join(
        kvgen.layer_bytes(r.block_hash, i, r.tokens, layout.bytes_per_token_layer)
        for i in layers
        for r in refs
    )


class AgentClient:
    def __init__(
        self, endpoint: str, timeout_s: float = 120.0, identity: tls.IdentityDir | None = None
    ) -> None:
        """`identity`: mutual TLS with this identity directory (the agent is verified as
        pki.role_dns_name("agent"), see dualpath_common.tls); plaintext without."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.identity = identity
        self._channels = tls.RenewingChannel(
            lambda: tls.channel(endpoint, identity=identity, server_role="agent", options=_OPTIONS),
            identity,
        )
        self._stub_of: tuple[grpc.Channel, agent_pb2_grpc.AgentStub] | None = None

    @property
    def stub(self) -> agent_pb2_grpc.AgentStub:
        """The stub of the current channel (a new one after a certificate rotation)."""
        channel = self._channels.current()[0]
        if self._stub_of is None or self._stub_of[0] is not channel:
            self._stub_of = (channel, agent_pb2_grpc.AgentStub(channel))
        return self._stub_of[1]

    @property
    def _channel(self) -> grpc.Channel:
        return self._channels.current()[0]

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.all():
            channel.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    # ----- status ----------------------------------------------------------------------
    def health(self) -> agent_pb2.HealthResponse:
        return self.stub.Health(agent_pb2.HealthRequest(), timeout=self.timeout_s)

    def stat(self) -> agent_pb2.StatResponse:
        return self.stub.Stat(agent_pb2.StatRequest(), timeout=self.timeout_s)

    def peer_info(self) -> agent_pb2.PeerInfoResponse:
        return self.stub.PeerInfo(agent_pb2.PeerInfoRequest(), timeout=self.timeout_s)

    def lookup(self, blocks: Iterable[BlockLike | bytes]) -> tuple[int, list[bool]]:
        hashes = [b if isinstance(b, bytes) else block_ref(b).block_hash for b in blocks]
        reply = self.stub.Lookup(
            agent_pb2.LookupRequest(block_hashes=hashes), timeout=self.timeout_s
        )
        return reply.prefix_blocks, list(reply.present)

    # ----- writing blocks ---------------------------------------------------------------
    def put_blocks(
        self, blocks: Iterable[tuple[BlockLike, bytes]], layout: BlockLayout
    ) -> agent_pb2.PutBlocksResponse:
        """Store blocks given as (block, dense [layers, tokens, bytes] data)."""

        def chunks() -> Iterator[agent_pb2.BlockChunk]:
            for block, data in blocks:
                ref = block_ref(block)
                view = memoryview(data)
                yield agent_pb2.BlockChunk(
                    ref=ref,
                    layout=layout_msg(layout),
                    total_bytes=len(data),
                    crc32c=crc32c(data),
                    data=bytes(view[:CHUNK]),
                )
                for start in range(CHUNK, len(data), CHUNK):
                    yield agent_pb2.BlockChunk(data=bytes(view[start : start + CHUNK]))

        return self.stub.PutBlocks(chunks(), timeout=self.timeout_s)

    def seed_synthetic(
        self, blocks: Iterable[BlockLike], layout: BlockLayout
    ) -> agent_pb2.PutBlocksResponse:
        """Store blocks whose bytes the agent generates itself (kvgen, from each hash)."""

        def chunks() -> Iterator[agent_pb2.BlockChunk]:
            for block in blocks:
                ref = block_ref(block)
                yield agent_pb2.BlockChunk(
                    ref=ref,
                    layout=layout_msg(layout),
                    total_bytes=layout.block_bytes(ref.tokens),
                    synthetic=True,
                )

        return self.stub.PutBlocks(chunks(), timeout=self.timeout_s)

    # ----- reading ---------------------------------------------------------------------
    def read_block(
        self, block_hash: bytes, layer: int | None = None, layout: BlockLayout | None = None
    ) -> bytes:
        request = agent_pb2.ReadBlockRequest(block_hash=block_hash)
        if layer is not None:
            request.layer = layer
        if layout is not None:
            request.layout.CopyFrom(layout_msg(layout))
        return b"".join(c.data for c in self.stub.ReadBlock(request, timeout=self.timeout_s))

    def read_region(self, request_id: str, kind: str = "load", layer: int | None = None) -> bytes:
        kinds = {
            "load": agent_pb2.RegionKind.REGION_KIND_LOAD,
            "merged": agent_pb2.RegionKind.REGION_KIND_MERGED,
        }
        request = agent_pb2.ReadRegionRequest(request_id=request_id, kind=kinds[kind])
        if layer is not None:
            request.layer = layer
        return b"".join(c.data for c in self.stub.ReadRegion(request, timeout=self.timeout_s))

    # ----- the read paths ----------------------------------------------------------------
    def load_stream(
        self,
        request_id: str,
        blocks: Sequence[BlockLike],
        layout: BlockLayout,
        read_path: ReadPath,
        decode_endpoint: str = "",
        de_read_fraction: float = 0.5,
        missed_tokens: int = 0,
        release_after_load: bool = True,
        keep_for_merge: bool = False,
    ) -> Any:
        """The raw LoadProgress stream (one message per layer, then done); cancel() it to
        abort the load."""
        request = agent_pb2.LoadRequest(
            request_id=request_id,
            blocks=[block_ref(b) for b in blocks],
            layout=layout_msg(layout),
            read_path=int(read_path),
            de_read_fraction=de_read_fraction if read_path == ReadPath.SPLIT else 0.0,
            decode_agent_endpoint=decode_endpoint,
            release_after_load=release_after_load,
            missed_tokens=missed_tokens,
            keep_for_merge=keep_for_merge,
        )
        return self.stub.Load(request, timeout=self.timeout_s)

    def load(
        self,
        request_id: str,
        blocks: Sequence[BlockLike],
        layout: BlockLayout,
        read_path: ReadPath,
        *,
        on_layer: Callable[[agent_pb2.LoadProgress], None] | None = None,
        **options: Unpack[LoadOptions],
    ) -> LoadResult:
        """Load a cached prefix; `on_layer` runs as each layer becomes usable (layer-wise
        prefill would compute on it while the next is in flight)."""
        layers_seen: list[int] = []
        final = None
        for progress in self.load_stream(request_id, blocks, layout, read_path, **options):
            if progress.done:
                final = progress
            else:
                layers_seen.append(progress.layer)
                if on_layer is not None:
                    on_layer(progress)
        if final is None:
            raise RuntimeError(f"load {request_id}: stream ended without a final message")
        return LoadResult(
            request_id=request_id,
            read_path=ReadPath(final.read_path),
            bytes_total=final.bytes_total,
            bytes_from_local_storage=final.bytes_from_local_storage,
            bytes_from_peer=final.bytes_from_peer,
            blocks_verified=final.blocks_verified,
            blocks_local=final.blocks_local,
            blocks_remote=final.blocks_remote,
            elapsed_s=final.elapsed_s,
            region_address=final.region_address,
            region_length=final.region_length,
            region_layer_stride=final.region_layer_stride,
            layers_seen=layers_seen,
            local_storage_read_s=final.local_storage_read_s,
            remote_storage_read_s=final.remote_storage_read_s,
            peer_stream_s=final.peer_stream_s,
            fallback_blocks=final.fallback_blocks,
            fallback_reason=final.fallback_reason,
        )

    def commit(
        self,
        request_id: str,
        missed_tokens: int,
        new_blocks: Sequence[BlockLike] = (),
        persist: bool = True,
        missed_kv: bytes = b"",
        decode_endpoint: str = "",
    ) -> agent_pb2.CommitResponse:
        """After a Load with missed_tokens and release_after_load=False: send the missed
        tokens' KV to the decode agent, which merges it and persists the new full blocks.
        Without missed_kv the prefill agent emulates the computed KV with kvgen bytes."""
        return self.stub.Commit(
            agent_pb2.CommitRequest(
                request_id=request_id,
                missed_tokens=missed_tokens,
                missed_kv=missed_kv,
                new_blocks=[block_ref(b) for b in new_blocks],
                persist=persist,
                decode_agent_endpoint=decode_endpoint,
            ),
            timeout=self.timeout_s,
        )

    def release(self, request_id: str) -> agent_pb2.ReleaseResponse:
        return self.stub.Release(
            agent_pb2.ReleaseRequest(request_id=request_id), timeout=self.timeout_s
        )


# Re-exported for callers that build agent requests themselves (engines, benches, tests).
__all__ = [
    "AgentClient",
    "BlockLike",
    "LoadResult",
    "ReadPath",
    "block_ref",
    "expected_region",
    "layout_msg",
]
