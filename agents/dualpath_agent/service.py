"""The gRPC Agent servicer: maps each RPC to its role's module, errors to gRPC statuses
(errors.status_of) and counts every outcome in dualpath_agent_operations_total.

Roles: load.py (Load into a request region, with the decode-agent fallback),
engine_load.py (Load into an engine's KV cache), serve.py (ServeLayers), merge.py (Commit,
Merge), tooling.py (PutBlocks, ReadBlock, ReadRegion). They receive this servicer for the
core, the peer stubs, metrics, the hold lease and the peer-failure callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from dualpath.v1 import agent_pb2, agent_pb2_grpc

from dualpath_agent.blockhash import validate_hash
from dualpath_agent.core import AgentCore
from dualpath_agent.engine_load import load_into_engine
from dualpath_agent.errors import AgentError, status_of
from dualpath_agent.load import load_region
from dualpath_agent.merge import commit, merge
from dualpath_agent.peers import GRPC_OPTIONS, PeerClients
from dualpath_agent.serve import serve_layers
from dualpath_agent.tooling import put_blocks, read_block, read_region
from dualpath_agent.validation import require

log = logging.getLogger(__name__)

__all__ = ["GRPC_OPTIONS", "AgentService", "PeerClients"]


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, core: AgentCore) -> None:
        self.core = core
        self.peers = PeerClients()
        self.metrics = core.metrics
        # Told (peer endpoint, why) when a decode agent fails under a Load: the load
        # reporter forwards it to the controller (ReportAgentFailure).
        self.on_peer_failure: Callable[[str, str], None] | None = None

    # ----- helpers ----------------------------------------------------------------------
    def _fail(self, context: grpc.ServicerContext, op: str, exc: BaseException) -> None:
        code, message = status_of(exc)
        self.metrics.operations.labels(op, code.name.lower()).inc()
        level = logging.WARNING if code != grpc.StatusCode.INTERNAL else logging.ERROR
        log.log(level, f"{op} failed", extra={"code": code.name, "error": message})
        context.abort(code, message)

    def _unary(self, op: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except Exception as exc:
            self._fail(context, op, exc)
            raise  # not reached: abort raises
        self.metrics.operations.labels(op, "ok").inc()
        return result

    def _stream(self, op: str, context: grpc.ServicerContext, gen: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from gen
        except Exception as exc:
            self._fail(context, op, exc)
        else:
            self.metrics.operations.labels(op, "ok").inc()

    def hold_deadline(self) -> float:
        return time.time() + self.core.config.hold_s

    # ----- simple RPCs --------------------------------------------------------------------
    def Health(self, request: agent_pb2.HealthRequest, context: grpc.ServicerContext) -> Any:
        down = self.core.shutting_down.is_set()
        return agent_pb2.HealthResponse(serving=not down, message="shutting down" if down else "ok")

    def Stat(self, request: agent_pb2.StatRequest, context: grpc.ServicerContext) -> Any:
        c = self.core
        s = c.snapshot()
        q = c.read_queue.snapshot()
        return agent_pb2.StatResponse(
            node=c.config.node,
            role=c.config.role,
            peer_transport=s.peer_transport,
            storage_transport=s.storage_transport,
            fallback_reason=s.fallback_reason,
            qos_applied=s.qos_applied,
            blocks_stored=s.store_blocks,
            bytes_stored=s.store_bytes,
            capacity_bytes=s.capacity_bytes,
            read_queue_length=s.read_queue_length,
            read_queue_bytes=s.read_queue_bytes,
            read_queue_tokens=s.read_queue_tokens,
            snic_inflight_bytes=s.snic_inflight_bytes,
            buffer_bytes_total=s.buffer_total["host"],
            buffer_bytes_free=s.buffer_free["host"],
            checksum_failures=s.store_checksum_failures + c.peer_checksum_failures,
            evictions=s.evictions,
            device_tier=s.device_tier,
            device_bytes_total=s.buffer_total["device"],
            device_bytes_free=s.buffer_free["device"],
            snic_read_bytes_per_s=c.bucket.bytes_per_s,
            direct_io=c.storage.direct_io,
            agent_name=c.peer.name,
            held_requests=s.held_requests,
            active_transfers=s.active_transfers,
            storage_reads_completed=q.completed_reads,
            storage_bytes_read=q.completed_bytes,
            device_detail=c.device.info.detail,
            shutting_down=c.shutting_down.is_set(),
        )

    def PeerInfo(self, request: agent_pb2.PeerInfoRequest, context: grpc.ServicerContext) -> Any:
        def run() -> agent_pb2.PeerInfoResponse:
            if request.caller_metadata:
                self.add_peer(request.caller_metadata)
            return agent_pb2.PeerInfoResponse(
                agent_name=self.core.peer.name,
                metadata=self.core.peer.metadata(),
                peer_transport=self.core.peer.kind,
                device_mem_type=self.core.device_pool.mem_type,
            )

        return self._unary("peer_info", context, run)

    def add_peer(self, metadata: bytes) -> str:
        try:
            return self.core.peer.add_peer(metadata)
        except Exception as exc:
            raise AgentError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot use the peer's transport metadata with {self.core.peer.kind}: {exc}",
            ) from exc

    def Lookup(self, request: agent_pb2.LookupRequest, context: grpc.ServicerContext) -> Any:
        def run() -> agent_pb2.LookupResponse:
            for i, h in enumerate(request.block_hashes):
                validate_hash(h, f"block_hashes[{i}]")
            present = self.core.store.lookup(list(request.block_hashes))
            prefix = next((i for i, p in enumerate(present) if not p), len(present))
            return agent_pb2.LookupResponse(prefix_blocks=prefix, present=present)

        return self._unary("lookup", context, run)

    def Release(self, request: agent_pb2.ReleaseRequest, context: grpc.ServicerContext) -> Any:
        def run() -> agent_pb2.ReleaseResponse:
            require(request.request_id, "request_id")
            kinds, freed = self.core.held.release_all_of(request.request_id)
            return agent_pb2.ReleaseResponse(released=kinds, bytes_freed=freed)

        return self._unary("release", context, run)

    # ----- data paths: each role's module does the work ------------------------------------
    def Load(self, request: agent_pb2.LoadRequest, context: grpc.ServicerContext) -> Any:
        if request.HasField("engine_target"):
            return self._stream("load", context, load_into_engine(self, request, context))
        return self._stream("load", context, load_region(self, request, context))

    def ServeLayers(
        self, request: agent_pb2.ServeLayersRequest, context: grpc.ServicerContext
    ) -> Any:
        return self._stream("serve_layers", context, serve_layers(self, request, context))

    def Commit(self, request: agent_pb2.CommitRequest, context: grpc.ServicerContext) -> Any:
        return self._unary("commit", context, lambda: commit(self, request))

    def Merge(self, request: agent_pb2.MergeRequest, context: grpc.ServicerContext) -> Any:
        return self._unary("merge", context, lambda: merge(self, request))

    # ----- tooling ------------------------------------------------------------------------------
    def PutBlocks(
        self, request_iterator: Iterator[agent_pb2.BlockChunk], context: grpc.ServicerContext
    ) -> Any:
        return self._unary("put_blocks", context, lambda: put_blocks(self, request_iterator))

    def ReadBlock(self, request: agent_pb2.ReadBlockRequest, context: grpc.ServicerContext) -> Any:
        return self._stream("read_block", context, read_block(self, request))

    def ReadRegion(
        self, request: agent_pb2.ReadRegionRequest, context: grpc.ServicerContext
    ) -> Any:
        return self._stream("read_region", context, read_region(self, request))
