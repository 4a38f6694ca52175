"""The gRPC Agent service: request validation, the read paths, Merge/Commit, tooling RPCs.

Threads: each RPC runs on a gRPC worker thread. A Load starts one thread per part (local
storage read, decode-side stream) and yields a progress message each time a layer is
complete on every part and verified. Errors of any part cancel the others.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from queue import Queue
from typing import Any

import grpc
import numpy as np
from dualpath.v1 import agent_pb2, agent_pb2_grpc
from dualpath_common import tls
from dualpath_common.tls import CHANNEL_OPTIONS

from dualpath_agent import kvgen
from dualpath_agent.blockfile import ChecksumMismatch, crc32c
from dualpath_agent.buffer import Cancelled, Region
from dualpath_agent.core import (
    AgentCore,
    BlockPlan,
    Held,
    Staged,
    copy_staged_layer_to_region,
)
from dualpath_agent.engine_load import EngineLoad
from dualpath_agent.engine_target import (
    REMOTE_PART,
    EngineTarget,
    layer_tag,
    parse_engine_target,
)
from dualpath_agent.errors import PATH_LABEL, AgentError, PeerFailed, status_of
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.store import (
    StoreFull,
)
from dualpath_agent.transport import Desc, LayerWrites, TransferError
from dualpath_agent.validation import (
    check_layer_span,
    de_block_count,
    parse_layout,
    plan_blocks,
    require,
    token_ranges_missing,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 << 20
CHUNK = 1 << 20
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


class LoadState:
    """Per-layer completion of the parts of one Load, and the first error of any part."""

    def __init__(self, layers: int, parts: Sequence[str]) -> None:
        self.layers = layers
        self._cond = threading.Condition()
        self._done = dict.fromkeys(parts, 0)
        self.bytes = dict.fromkeys(parts, 0)
        self.error: BaseException | None = None
        self.cancel = threading.Event()
        self.crcs: dict[bytes, Sequence[int]] = {}
        self.clean: dict[str, bool] = dict.fromkeys(parts, False)
        self.timing: dict[str, float] = {}
        self._on_cancel: list[Callable[[], Any]] = []
        # The decode-side part read from own storage after the peer failed (see _load_remote).
        self.fallback_blocks = 0
        self.fallback_bytes = 0
        self.fallback_reason = ""

    def layer_done(self, part: str, layer: int, nbytes: int) -> None:
        with self._cond:
            # A fallback re-delivers layers a failed part had already reported: never go back.
            self._done[part] = max(self._done[part], layer + 1)
            self.bytes[part] += nbytes
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = exc
            callbacks = list(self._on_cancel)
            self._cond.notify_all()
        self.cancel.set()
        for cb in callbacks:
            with contextlib.suppress(Exception):
                cb()

    def on_cancel(self, callback: Callable[[], Any]) -> None:
        with self._cond:
            self._on_cancel.append(callback)
            fire = self.cancel.is_set()
        if fire:
            callback()

    def wait_layer(self, layer: int, outer_cancel: threading.Event) -> None:
        with self._cond:
            # default: a Load without blocks has no parts, so every layer is ready at once.
            while min(self._done.values(), default=self.layers) <= layer:
                if self.error is not None:
                    raise self.error
                if outer_cancel.is_set() or self.cancel.is_set():
                    raise Cancelled("load cancelled")
                self._cond.wait(0.05)


def _refs(plans: Sequence[BlockPlan]) -> list[agent_pb2.BlockRef]:
    return [
        agent_pb2.BlockRef(block_hash=p.block_hash, parent_hash=p.parent_hash, tokens=p.tokens)
        for p in plans
    ]


def _layout_msg(layout: BlockLayout) -> agent_pb2.BlockLayout:
    return agent_pb2.BlockLayout(
        layers=layout.layers,
        block_tokens=layout.block_tokens,
        bytes_per_token_layer=layout.bytes_per_token_layer,
    )


def _groups(sizes: Sequence[int], group_bytes: int) -> list[list[int]]:
    """Consecutive block indices in groups of about group_bytes (0 = a single group)."""
    if group_bytes <= 0:
        return [list(range(len(sizes)))]
    groups: list[list[int]] = [[]]
    size = 0
    for i, n in enumerate(sizes):
        if groups[-1] and size + n > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


class _GroupPoster:
    """Writes staged groups to the target, layer by layer, on its own thread: with NIXL over
    cma a post copies synchronously, so posting here lets the caller read the next group
    meanwhile. Layer i of group g is followed by the notification "<transfer_id>:<i>:<g>"."""

    def __init__(
        self,
        core: AgentCore,
        peer: str,
        request: agent_pb2.ServeLayersRequest,
        layout: BlockLayout,
        cancel: threading.Event,
        engine: EngineTarget | None = None,
        groups: int = 1,
    ) -> None:
        self.core, self.peer, self.request, self.layout = core, peer, request, layout
        self.cancel = cancel
        # Writing into an engine's KV cache: its own descriptors and notification tags.
        self.engine, self.groups = engine, groups
        self.pending: list[Any] = []
        self.prepared: list[LayerWrites] = []  # released once their writes have completed
        self._completed = 0  # pending[:_completed] are known to have completed
        self.sent = 0
        self.error: BaseException | None = None
        self._queue: Queue[tuple[int, Staged, int] | None] = Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="serve-post")
        self._thread.start()

    def submit(self, group: int, staged: Staged, first_block: int) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((group, staged, first_block))

    def _rows_and_tags(self, group: int, staged: Staged, first_block: int) -> tuple[Any, Any]:
        """Write descriptors (layers, blocks, 3) of a staged group and its layers' tags."""
        r = self.request
        if self.engine is not None:
            target = self.engine.subset(first_block, first_block + len(staged.blocks))
            rows = target.write_rows(
                [staged.layer_address(i, 0) for i in range(len(staged.blocks))],
                [h.layer_stride for h in staged.headers],
            )
            tags = [
                layer_tag(r.transfer_id, layer, REMOTE_PART, group, self.groups)
                for layer in range(self.layout.layers)
            ]
            return rows, tags
        return self._region_rows(staged), [
            f"{r.transfer_id}:{layer}:{group}".encode() for layer in range(self.layout.layers)
        ]

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            group, staged, first_block = item
            if self.error is not None or self.cancel.is_set():
                continue
            try:
                rows, tags = self._rows_and_tags(group, staged, first_block)
                remote_mem = self.engine.mem_type if self.engine else self.request.target_mem_type
                writes = self.core.peer.prepare_layer_writes(self.peer, rows, remote_mem, "DRAM")
                self.prepared.append(writes)
                layer_bytes = int(rows[0, :, 2].sum())
                for layer in range(self.layout.layers):
                    self.pending.append(writes.post(layer, tags[layer]))
                    self.sent += layer_bytes
                    self._progress_pending()
            except BaseException as exc:
                self.error = exc
                self.cancel.set()

    def _region_rows(self, staged: Staged) -> Any:
        """Descriptors into a peer agent's layer-major region: layer i = layer 0's + i x
        stride on each side, built with numpy and prepared once per group, so posting a
        layer costs no Python object per block (posting time is on the critical path)."""
        bpt = self.layout.bytes_per_token_layer
        r = self.request
        layer0 = np.array(
            [staged.layer_address(i, 0) for i in range(len(staged.blocks))], dtype=np.uint64
        )
        local_stride = np.array([h.layer_stride for h in staged.headers], dtype=np.uint64)
        remote0 = np.array(
            [r.target_address + b.first_token * bpt for b in staged.blocks], dtype=np.uint64
        )
        sizes = np.array([b.tokens * bpt for b in staged.blocks], dtype=np.uint64)
        layers = np.arange(self.layout.layers, dtype=np.uint64)[:, None]
        rows = np.empty((self.layout.layers, len(sizes), 3), dtype=np.uint64)
        rows[:, :, 0] = layer0 + layers * local_stride
        rows[:, :, 1] = remote0 + layers * np.uint64(r.target_layer_stride)
        rows[:, :, 2] = sizes
        return rows

    def _progress_pending(self) -> None:
        # Complete earlier layers' writes while posting the next ones, so their
        # notifications leave now and the target verifies layer i while i+1 is copied
        # (measured: otherwise they all arrive in one burst after the last post).
        while self._completed < len(self.pending) and self.pending[self._completed].progress():
            self._completed += 1

    def finish(self, timeout_s: float) -> int:
        """Wait until every write has completed; returns the bytes written."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        while self.pending:
            self.pending[0].wait(timeout_s, self.cancel)
            self.pending.pop(0)
        self._release_prepared()
        return self.sent

    def _release_prepared(self) -> None:
        for writes in self.prepared:
            writes.release()
        self.prepared.clear()

    def abort(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        for handle in self.pending:
            with contextlib.suppress(Exception):
                handle.wait(1.0, None)
        self.pending.clear()
        self._release_prepared()


def _peer_failed(exc: BaseException) -> bool:
    """A failure of the decode agent or the path to it (refused, broken stream, timeout,
    overload, bytes that did not verify where they landed), as opposed to an answer about
    the request or the blocks, which reading them here would only repeat."""
    if isinstance(exc, PeerFailed):
        return exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if isinstance(exc, AgentError):
        return exc.code == grpc.StatusCode.DATA_LOSS  # landed bytes failed verification here
    return isinstance(exc, TransferError)


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

    def _hold_deadline(self) -> float:
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
                self._add_peer(request.caller_metadata)
            return agent_pb2.PeerInfoResponse(
                agent_name=self.core.peer.name,
                metadata=self.core.peer.metadata(),
                peer_transport=self.core.peer.kind,
                device_mem_type=self.core.device_pool.mem_type,
            )

        return self._unary("peer_info", context, run)

    def _add_peer(self, metadata: bytes) -> str:
        try:
            return self.core.peer.add_peer(metadata)
        except Exception as exc:
            raise AgentError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot use the peer's transport metadata with {self.core.peer.kind}: {exc}",
            ) from exc

    def Lookup(self, request: agent_pb2.LookupRequest, context: grpc.ServicerContext) -> Any:
        def run() -> agent_pb2.LookupResponse:
            from dualpath_agent.blockhash import validate_hash

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

    # ----- Load (prefill side) --------------------------------------------------------------
    def Load(self, request: agent_pb2.LoadRequest, context: grpc.ServicerContext) -> Any:
        if request.HasField("engine_target"):
            return self._stream("load", context, self._load_into_engine(request, context))
        return self._stream("load", context, self._load(request, context))

    def _load_into_engine(
        self, request: agent_pb2.LoadRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.LoadProgress]:
        yield from EngineLoad(self, request).run(context)

    def _load(
        self, request: agent_pb2.LoadRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.LoadProgress]:
        core = self.core
        started = time.monotonic()
        require(request.request_id, "request_id")
        layout = parse_layout(request.layout)
        if request.handoff:
            raise ValueError("handoff applies to loads into an engine (engine_target)")
        # No blocks = nothing cached (a cold prompt): the Load only reserves the region for
        # the missed tokens, so that a Commit can send them to the decode side.
        if not request.blocks and not request.missed_tokens:
            raise ValueError("blocks is empty and missed_tokens is 0: nothing to load")
        blocks = plan_blocks(request.blocks, layout, allow_empty=True)
        n_remote = de_block_count(request.read_path, request.de_read_fraction, len(blocks))
        if n_remote and not request.decode_agent_endpoint:
            raise ValueError("decode_agent_endpoint is required for DE_READ and SPLIT")
        if request.keep_for_merge and request.release_after_load:
            raise ValueError(
                "keep_for_merge needs release_after_load=false (the staged prefix waits for "
                "a Commit of this load)"
            )
        if core.held.get(request.request_id, "load") is not None:
            raise AgentError(
                grpc.StatusCode.ALREADY_EXISTS, f"request {request.request_id} is already loaded"
            )
        remote, local = blocks[:n_remote], blocks[n_remote:]
        prefix_tokens = sum(b.tokens for b in blocks)
        region_layout = RegionLayout(
            layout.layers, prefix_tokens + request.missed_tokens, layout.bytes_per_token_layer
        )
        label = PATH_LABEL[request.read_path]
        parts = [name for name, part in (("local", local), ("remote", remote)) if part]
        with core.activity() as cancel:
            context.add_callback(cancel.set)
            region = core.device_pool.allocate(
                region_layout.nbytes, core.config.allocation_timeout_s, cancel
            )
            state = LoadState(layout.layers, parts)
            threads = []
            if local:
                threads.append(
                    threading.Thread(
                        target=self._load_local,
                        args=(state, local, layout, region, region_layout, label),
                        daemon=True,
                    )
                )
            if remote:
                threads.append(
                    threading.Thread(
                        target=self._load_remote,
                        args=(state, remote, layout, region, region_layout, label, request),
                        daemon=True,
                    )
                )
            for t in threads:
                t.start()
            finished = False
            try:
                prefix_bytes = layout.layers * prefix_tokens * layout.bytes_per_token_layer
                for layer in range(layout.layers):
                    state.wait_layer(layer, cancel)
                    if layer == 0:
                        self.metrics.first_layer_seconds.labels(label).observe(
                            time.monotonic() - started
                        )
                    yield agent_pb2.LoadProgress(
                        request_id=request.request_id,
                        layer=layer,
                        layers_ready=layer + 1,
                        bytes_loaded=(layer + 1) * prefix_bytes // layout.layers,
                        bytes_total=prefix_bytes,
                        region_address=region.address,
                        region_length=region_layout.nbytes,
                        region_layer_stride=region_layout.layer_stride,
                        read_path=request.read_path,
                    )
                for t in threads:
                    t.join()
                if state.error is not None:
                    raise state.error
                elapsed = time.monotonic() - started
                self.metrics.load_seconds.labels(label).observe(elapsed)
                if not request.release_after_load:
                    core.held.put(
                        request.request_id,
                        Held(
                            "load",
                            region,
                            self._hold_deadline(),
                            region_layout=region_layout,
                            info={
                                "layout": layout,
                                "blocks": blocks,
                                "crcs": dict(state.crcs),
                                "decode": request.decode_agent_endpoint,
                                "missed_reserved": request.missed_tokens,
                                "prefix_tokens": prefix_tokens,
                            },
                        ),
                    )
                finished = True
                yield agent_pb2.LoadProgress(
                    request_id=request.request_id,
                    layer=layout.layers - 1,
                    layers_ready=layout.layers,
                    done=True,
                    bytes_loaded=prefix_bytes,
                    bytes_total=prefix_bytes,
                    bytes_from_local_storage=state.bytes.get("local", 0) + state.fallback_bytes,
                    bytes_from_peer=state.bytes.get("remote", 0) - state.fallback_bytes,
                    blocks_verified=len(blocks),
                    region_address=region.address,
                    region_length=region_layout.nbytes,
                    region_layer_stride=region_layout.layer_stride,
                    elapsed_s=elapsed,
                    blocks_local=len(local),
                    blocks_remote=len(remote),
                    read_path=request.read_path,
                    local_storage_read_s=state.timing.get("local_storage_read_s", 0.0),
                    remote_storage_read_s=state.timing.get("remote_storage_read_s", 0.0),
                    peer_stream_s=state.timing.get("peer_stream_s", 0.0),
                    fallback_blocks=state.fallback_blocks,
                    fallback_reason=state.fallback_reason,
                )
            finally:
                if not finished:
                    state.fail(Cancelled("load abandoned"))
                    for t in threads:
                        t.join(timeout=10)
                    if remote and not state.clean.get("remote"):
                        # The decode agent may still have writes in flight into the region.
                        core.defer_release(
                            region,
                            core.config.region_quarantine_s,
                            "decode-side stream did not finish",
                        )
                    else:
                        region.release()
                elif request.release_after_load:
                    if remote and not state.clean.get("remote"):
                        # Fell back: the failed decode agent may still have writes in flight.
                        core.defer_release(
                            region, core.config.region_quarantine_s, "decode agent failed"
                        )
                    else:
                        region.release()

    def _load_local(
        self,
        state: LoadState,
        blocks: list[BlockPlan],
        layout: BlockLayout,
        region: Region,
        region_layout: RegionLayout,
        label: str,
        part: str = "local",
    ) -> None:
        core = self.core
        started = time.monotonic()
        try:
            with core.stage(blocks, layout, state.cancel, label) as staged:
                # Every byte was verified in the host buffer; layer i now goes to the device
                # tier (H2D on a GPU), the paper's layer-wise load from the PE buffer.
                state.timing[f"{part}_storage_read_s"] = time.monotonic() - started
                state.crcs.update(
                    {
                        b.block_hash: h.layer_crcs
                        for b, h in zip(blocks, staged.headers, strict=True)
                    }
                )
                indices = range(len(blocks))
                for layer in range(layout.layers):
                    if state.cancel.is_set():
                        raise Cancelled("load cancelled")
                    moved = copy_staged_layer_to_region(
                        core, staged, indices, layer, region.address, region_layout
                    )
                    self.metrics.bytes.labels(label, "device", "in").inc(moved)
                    state.layer_done(part, layer, moved)
                    if part == "remote":
                        state.fallback_bytes += moved
            if part == "local":
                state.clean["local"] = True
        except BaseException as exc:
            state.fail(exc)

    def _load_remote(
        self,
        state: LoadState,
        blocks: list[BlockPlan],
        layout: BlockLayout,
        region: Region,
        region_layout: RegionLayout,
        label: str,
        request: agent_pb2.LoadRequest,
    ) -> None:
        """The decode-side part: the decode agent reads the blocks and writes them here. If
        it fails (refused, broken stream, timeout, bad bytes), this agent reads those blocks
        from its own storage instead (the store is shared), so the load still completes: a
        dead decode node costs this node's storage bandwidth, not the request."""
        endpoint = request.decode_agent_endpoint
        cancels: list[Callable[[], Any]] = []
        try:
            self._stream_from_peer(
                state, blocks, layout, region, region_layout, label, request, cancels
            )
            return
        except Exception as exc:  # every peer failure falls back
            failure = self._peer_error(endpoint, exc)
        if state.cancel.is_set() or not _peer_failed(failure):
            # The caller went away, the local part failed, or the peer answered for the
            # data itself (NOT_FOUND, DATA_LOSS: own storage holds the same blocks).
            state.fail(failure)
            return
        for cancel in cancels:
            cancel()  # stop a live but failing peer from writing on
        reason = getattr(getattr(failure, "code", None), "name", type(failure).__name__)
        state.fallback_reason = f"{reason}: {failure}"[:512]
        state.fallback_blocks = len(blocks)
        self.metrics.peer_fallbacks.labels(label, reason).inc()
        log.warning(
            "decode agent failed mid-load: reading its blocks from own storage",
            extra={
                "request_id": request.request_id,
                "decode_agent": endpoint,
                "blocks": len(blocks),
                "reason": state.fallback_reason,
            },
        )
        if self.on_peer_failure is not None:
            self.on_peer_failure(endpoint, state.fallback_reason)
        self._load_local(state, blocks, layout, region, region_layout, label, part="remote")

    @staticmethod
    def _peer_error(endpoint: str, exc: BaseException) -> BaseException:
        if isinstance(exc, grpc.RpcError):
            return PeerFailed(endpoint, exc)
        if isinstance(exc, StopIteration):
            return TransferError(f"peer agent {endpoint} closed the stream early")
        if isinstance(exc, ChecksumMismatch):
            return AgentError(
                grpc.StatusCode.DATA_LOSS,
                f"bytes from peer agent {endpoint} failed verification: {exc}",
            )
        return exc

    def _stream_from_peer(
        self,
        state: LoadState,
        blocks: list[BlockPlan],
        layout: BlockLayout,
        region: Region,
        region_layout: RegionLayout,
        label: str,
        request: agent_pb2.LoadRequest,
        cancels: list[Callable[[], Any]],
    ) -> None:
        core = self.core
        endpoint = request.decode_agent_endpoint
        transfer_id = uuid.uuid4().hex
        bpt = layout.bytes_per_token_layer
        first = blocks[0].first_token
        serve = agent_pb2.ServeLayersRequest(
            request_id=request.request_id,
            blocks=_refs(blocks),
            layout=_layout_msg(layout),
            target_agent=core.peer.name,
            target_metadata=core.peer.metadata(),
            target_mem_type=core.device_pool.mem_type,
            target_address=region.address + first * bpt,
            target_layer_stride=region_layout.layer_stride,
            transfer_id=transfer_id,
            keep_for_merge=request.keep_for_merge,
        )
        call = self.peers.stub(endpoint).ServeLayers(
            serve, timeout=core.config.transfer_timeout_s * 4
        )
        cancels.append(call.cancel)
        state.on_cancel(call.cancel)
        # Waits for the peer's writes also end when its call does: a dead peer must not
        # be waited for until the transfer timeout.
        peer_gone = threading.Event()
        state.on_cancel(peer_gone.set)
        call.add_done_callback(
            lambda c: peer_gone.set() if c.code() != grpc.StatusCode.OK else None
        )
        stream = iter(call)
        stream_started = time.monotonic()
        group, groups = 0, 1
        while group < groups:
            # The decode agent read and verified a group of blocks; its writes follow.
            staged = next(stream)
            if not staged.staged or staged.group != group:
                raise TransferError(f"peer agent {endpoint} sent group data out of order")
            if group == 0:
                stream_started = time.monotonic()
            groups = staged.groups
            part = self._group_blocks(blocks, staged, layout)
            crcs = {c.block_hash: list(c.layer_crc32c) for c in staged.checksums}
            state.crcs.update(crcs)
            for layer in range(layout.layers):
                tag = f"{transfer_id}:{layer}:{group}".encode()
                try:
                    core.peer.wait_notification(
                        staged.agent_name, tag, core.config.transfer_timeout_s, peer_gone
                    )
                except Cancelled:
                    if state.cancel.is_set():
                        raise
                    raise PeerFailed(endpoint, call) from None
                # Bytes were written by the peer: verify them where they landed.
                core.verify_region_layer(region.address, region_layout, layer, part, crcs, "peer")
                nbytes = sum(b.tokens for b in part) * bpt
                self.metrics.bytes.labels(label, "peer", "in").inc(nbytes)
                if group == groups - 1:  # layer i of every group has landed
                    state.timing["peer_stream_s"] = time.monotonic() - stream_started
                    state.layer_done("remote", layer, 0)
                state.bytes["remote"] += nbytes
            group += 1
        state.timing["remote_storage_read_s"] = staged.storage_read_s
        # The rest of the stream only reports completion and errors.
        drainer = threading.Thread(
            target=self._drain_serve_stream, args=(stream, state, endpoint), daemon=True
        )
        drainer.start()
        drainer.join(core.config.transfer_timeout_s)

    @staticmethod
    def _group_blocks(
        blocks: list[BlockPlan], staged: agent_pb2.ServeLayersProgress, layout: BlockLayout
    ) -> list[BlockPlan]:
        """The blocks a group message covers, checked against what was asked for."""
        part = blocks[staged.first_block : staged.first_block + len(staged.checksums)]
        if [b.block_hash for b in part] != [c.block_hash for c in staged.checksums] or any(
            len(c.layer_crc32c) != layout.layers for c in staged.checksums
        ):
            raise TransferError("peer sent checksums that do not match the requested blocks")
        return part

    @staticmethod
    def _drain_serve_stream(stream: Iterator[Any], state: LoadState, endpoint: str) -> None:
        """Every byte already landed and was verified; the stream's end only says whether
        the peer finished cleanly (else the region is quarantined before reuse)."""
        try:
            for msg in stream:
                if msg.done:
                    state.clean["remote"] = True
        except grpc.RpcError as exc:
            failed = PeerFailed(endpoint, exc)
            # A definitive answer means the peer's handler ended (and drained its writes).
            state.clean["remote"] = failed.code != grpc.StatusCode.UNAVAILABLE
            log.warning(
                "decode agent failed after its writes landed",
                extra={"decode_agent": endpoint, "error": str(failed)},
            )

    # ----- ServeLayers (decode side) ----------------------------------------------------------
    def ServeLayers(
        self, request: agent_pb2.ServeLayersRequest, context: grpc.ServicerContext
    ) -> Any:
        return self._stream("serve_layers", context, self._serve(request, context))

    def _serve(
        self, request: agent_pb2.ServeLayersRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.ServeLayersProgress]:
        core = self.core
        started = time.monotonic()
        require(request.request_id, "request_id")
        require(request.transfer_id, "transfer_id")
        layout = parse_layout(request.layout)
        engine: EngineTarget | None = None
        if request.HasField("engine_target"):
            blocks = plan_blocks(request.blocks, layout, full_only=True)
            engine = parse_engine_target(request.engine_target, layout, len(blocks))
            metadata = engine.agent_metadata
        else:
            require(request.target_metadata, "target_metadata")
            blocks = plan_blocks(request.blocks, layout)
            if request.target_mem_type not in ("DRAM", "VRAM"):
                raise ValueError(
                    f"target_mem_type must be DRAM or VRAM, got {request.target_mem_type!r}"
                )
            span = sum(b.tokens for b in blocks) * layout.bytes_per_token_layer
            if request.target_layer_stride < span:
                raise ValueError(
                    f"target_layer_stride {request.target_layer_stride} < {span} bytes"
                )
            check_layer_span(
                request.target_address,
                request.target_layer_stride,
                layout.layers,
                span,
                "target_address",
            )
            metadata = request.target_metadata
        groups = _groups(
            [layout.file_bytes(b.tokens) for b in blocks], core.config.stream_group_bytes
        )
        with core.activity() as cancel:
            context.add_callback(cancel.set)
            peer = self._add_peer(metadata)
            poster = _GroupPoster(core, peer, request, layout, cancel, engine, len(groups))
            staged_groups: list[Staged] = []
            kept = False
            try:
                read = 0
                with core.read_session(blocks, layout, cancel, "de_read") as session:
                    for g, indices in enumerate(groups):
                        staged = session.stage(indices)
                        staged_groups.append(staged)
                        read += staged.region.nbytes
                        yield agent_pb2.ServeLayersProgress(
                            request_id=request.request_id,
                            staged=True,
                            agent_name=core.peer.name,
                            group=g,
                            groups=len(groups),
                            first_block=indices[0],
                            storage_bytes=read,
                            storage_read_s=time.monotonic() - started,
                            checksums=[
                                agent_pb2.BlockChecksums(
                                    block_hash=b.block_hash, layer_crc32c=h.layer_crcs
                                )
                                for b, h in zip(staged.blocks, staged.headers, strict=True)
                            ],
                        )
                        # Written by the poster thread while this one reads the next group.
                        poster.submit(g, staged, indices[0])
                sent = poster.finish(core.config.transfer_timeout_s)
                self.metrics.bytes.labels("de_read", "peer", "out").inc(sent)
                if request.keep_for_merge:
                    for staged in staged_groups:
                        staged.kept = True
                    core.held.put(
                        request.request_id,
                        Held("staged", None, self._hold_deadline(), staged=staged_groups),
                    )
                    kept = True
                self.metrics.serve_seconds.observe(time.monotonic() - started)
                yield agent_pb2.ServeLayersProgress(
                    request_id=request.request_id, done=True, bytes_sent=sent
                )
            finally:
                # Never free the staging area under a transfer that may still read it.
                poster.abort()
                if not kept:
                    for staged in staged_groups:
                        staged.release()

    # ----- Commit (prefill side) and Merge (decode side) -------------------------------------
    def Commit(self, request: agent_pb2.CommitRequest, context: grpc.ServicerContext) -> Any:
        return self._unary("commit", context, lambda: self._commit(request))

    def _commit(self, request: agent_pb2.CommitRequest) -> agent_pb2.CommitResponse:
        core = self.core
        started = time.monotonic()
        require(request.request_id, "request_id")
        held = core.held.get(request.request_id, "load")
        if held is None or held.region_layout is None or held.region is None:
            raise AgentError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request {request.request_id} is not loaded on this agent "
                "(Load with release_after_load=false first; it may have been released)",
            )
        info = held.info
        layout: BlockLayout = info["layout"]
        prefix: list[BlockPlan] = info["blocks"]
        prefix_tokens: int = info["prefix_tokens"]
        missed = request.missed_tokens
        if missed > info["missed_reserved"]:
            raise ValueError(
                f"missed_tokens {missed} exceeds the {info['missed_reserved']} reserved by Load"
            )
        new_blocks = plan_blocks(
            request.new_blocks,
            layout,
            "new_blocks",
            prefix_tokens,
            allow_empty=True,
            full_only=True,
        )
        if new_blocks:
            if any(b.tokens < layout.block_tokens for b in prefix):
                raise ValueError(
                    "the prefix ends with a partial block; new_blocks cannot follow it"
                )
            if prefix and new_blocks[0].parent_hash != prefix[-1].block_hash:
                raise ValueError(
                    "new_blocks[0].parent_hash does not chain to the last prefix block"
                )
            if len(new_blocks) * layout.block_tokens > missed:
                raise ValueError(
                    f"new_blocks cover {len(new_blocks) * layout.block_tokens} tokens, "
                    f"more than missed_tokens {missed}"
                )
        endpoint = request.decode_agent_endpoint or info["decode"]
        if not endpoint:
            raise ValueError("decode_agent_endpoint is required (not given here nor to Load)")
        region_layout = held.region_layout
        bpt = layout.bytes_per_token_layer
        with core.activity():
            missed_crcs = self._write_missed(
                request, held.region, region_layout, layout, prefix_tokens, new_blocks
            )
            merge = agent_pb2.MergeRequest(
                request_id=request.request_id,
                layout=_layout_msg(layout),
                prefix_blocks=_refs(prefix),
                prefix_checksums=[
                    agent_pb2.BlockChecksums(
                        block_hash=b.block_hash, layer_crc32c=info["crcs"][b.block_hash]
                    )
                    for b in prefix
                ],
                missed_tokens=missed,
                missed_layer_crc32c=missed_crcs,
                new_blocks=_refs(new_blocks),
                persist=request.persist,
                source_agent=core.peer.name,
                source_metadata=core.peer.metadata(),
                source_mem_type=core.device_pool.mem_type,
                source_address=held.region.address,
                source_layer_stride=region_layout.layer_stride,
            )
            try:
                reply = self.peers.stub(endpoint).Merge(
                    merge, timeout=core.config.transfer_timeout_s * 4
                )
            except grpc.RpcError as exc:
                raise PeerFailed(endpoint, exc) from exc
        core.held.pop(request.request_id, "load")
        held.release()
        self.metrics.bytes.labels("merge", "peer", "out").inc(reply.bytes_from_peer)
        total = layout.layers * (prefix_tokens + missed) * bpt
        return agent_pb2.CommitResponse(
            bytes_sent_to_decode=reply.bytes_from_peer,
            bytes_decode_had=max(0, total - reply.bytes_from_peer),
            blocks_persisted=reply.blocks_persisted,
            blocks_already_present=reply.blocks_already_present,
            elapsed_s=time.monotonic() - started,
            persist_error=reply.persist_error,
        )

    def _write_missed(
        self,
        request: agent_pb2.CommitRequest,
        region: Region,
        region_layout: RegionLayout,
        layout: BlockLayout,
        prefix_tokens: int,
        new_blocks: list[BlockPlan],
    ) -> list[int]:
        """Put the missed tokens' KV (what prefill computed) into the region; CRC per layer."""
        missed = request.missed_tokens
        bpt = layout.bytes_per_token_layer
        per_layer = missed * bpt
        if request.missed_kv and len(request.missed_kv) != layout.layers * per_layer:
            raise ValueError(
                f"missed_kv is {len(request.missed_kv)} bytes; layers x missed_tokens x "
                f"bytes_per_token_layer = {layout.layers * per_layer}"
            )
        crcs = []
        tail = missed - len(new_blocks) * layout.block_tokens
        for layer in range(layout.layers):
            if request.missed_kv:
                data: bytes | memoryview = memoryview(request.missed_kv)[
                    layer * per_layer : (layer + 1) * per_layer
                ]
            else:
                pieces = [kvgen.layer_bytes(b.block_hash, layer, b.tokens, bpt) for b in new_blocks]
                if tail:
                    pieces.append(
                        kvgen.tail_layer_bytes(request.request_id.encode(), layer, tail, bpt)
                    )
                data = b"".join(pieces)
            if per_layer:
                self.core.write_device(
                    region.address + region_layout.offset(layer, prefix_tokens), data
                )
            crcs.append(crc32c(data))
        return crcs

    def Merge(self, request: agent_pb2.MergeRequest, context: grpc.ServicerContext) -> Any:
        return self._unary("merge", context, lambda: self._merge(request))

    def _merge(self, request: agent_pb2.MergeRequest) -> agent_pb2.MergeResponse:
        core = self.core
        started = time.monotonic()
        require(request.request_id, "request_id")
        require(request.source_metadata, "source_metadata")
        layout = parse_layout(request.layout)
        prefix = plan_blocks(request.prefix_blocks, layout, "prefix_blocks", allow_empty=True)
        prefix_tokens = sum(b.tokens for b in prefix)
        new_blocks = plan_blocks(
            request.new_blocks,
            layout,
            "new_blocks",
            prefix_tokens,
            allow_empty=True,
            full_only=True,
        )
        crcs = {c.block_hash: list(c.layer_crc32c) for c in request.prefix_checksums}
        for i, b in enumerate(prefix):
            if len(crcs.get(b.block_hash, ())) != layout.layers:
                raise ValueError(
                    f"prefix_checksums lacks {layout.layers} CRCs for prefix_blocks[{i}]"
                )
        missed = request.missed_tokens
        if missed and len(request.missed_layer_crc32c) != layout.layers:
            raise ValueError(f"missed_layer_crc32c needs {layout.layers} values")
        if request.source_mem_type not in ("DRAM", "VRAM"):
            raise ValueError(
                f"source_mem_type must be DRAM or VRAM, got {request.source_mem_type!r}"
            )
        region_layout = RegionLayout(
            layout.layers, prefix_tokens + missed, layout.bytes_per_token_layer
        )
        if request.source_layer_stride < region_layout.layer_stride:
            raise ValueError(
                f"source_layer_stride {request.source_layer_stride} < {region_layout.layer_stride}"
            )
        check_layer_span(
            request.source_address,
            request.source_layer_stride,
            layout.layers,
            region_layout.layer_stride,
            "source_address",
        )
        staged_held = core.held.pop(request.request_id, "staged")
        try:
            with core.activity() as cancel:
                source = self._add_peer(request.source_metadata)
                region = core.device_pool.allocate(
                    region_layout.nbytes, core.config.allocation_timeout_s, cancel
                )
                try:
                    reply = self._assemble(
                        request,
                        layout,
                        prefix,
                        crcs,
                        region,
                        region_layout,
                        staged_held,
                        source,
                        cancel,
                    )
                    reply.MergeFrom(
                        self._persist(layout, new_blocks, region, region_layout, request.persist)
                    )
                except BaseException:
                    region.release()
                    raise
                core.held.put(
                    request.request_id,
                    Held("merged", region, self._hold_deadline(), region_layout=region_layout),
                )
        finally:
            if staged_held is not None:
                staged_held.release()
        self.metrics.merge_seconds.observe(time.monotonic() - started)
        return reply

    def _assemble(
        self,
        request: agent_pb2.MergeRequest,
        layout: BlockLayout,
        prefix: list[BlockPlan],
        crcs: dict[bytes, list[int]],
        region: Region,
        region_layout: RegionLayout,
        staged_held: Held | None,
        source: str,
        cancel: threading.Event,
    ) -> agent_pb2.MergeResponse:
        """Prefix blocks staged here are copied locally; everything else is READ from the
        source region. Every byte is verified against the CRCs the prefill side sent."""
        core = self.core
        bpt = layout.bytes_per_token_layer
        local: list[BlockPlan] = []
        from_staging = 0
        for staged in staged_held.staged if staged_held is not None else []:
            where = staged.index_of()
            indices: list[int] = []
            for b in prefix:
                i = where.get(b.block_hash)
                if i is not None and staged.headers[i].tokens == b.tokens:
                    # Place the staged block at this request's token position.
                    staged.blocks[i] = b
                    local.append(b)
                    indices.append(i)
            for layer in range(layout.layers):
                from_staging += copy_staged_layer_to_region(
                    core, staged, indices, layer, region.address, region_layout
                )
        covered = [(b.first_token, b.first_token + b.tokens) for b in local]
        gaps = token_ranges_missing(region_layout.total_tokens, covered)
        descs = [
            Desc(
                region.address + region_layout.offset(layer, start),
                request.source_address + layer * request.source_layer_stride + start * bpt,
                (end - start) * bpt,
            )
            for layer in range(layout.layers)
            for start, end in gaps
        ]
        from_peer = sum(d.nbytes for d in descs)
        core.peer.post_read(source, descs, request.source_mem_type, core.device_pool.mem_type).wait(
            core.config.transfer_timeout_s, cancel
        )
        self.metrics.bytes.labels("merge", "peer", "in").inc(from_peer)
        prefix_tokens = sum(b.tokens for b in prefix)
        try:
            for layer in range(layout.layers):
                core.verify_region_layer(region.address, region_layout, layer, prefix, crcs, "peer")
                if request.missed_tokens:
                    address = region.address + region_layout.offset(layer, prefix_tokens)
                    actual = crc32c(core.device_bytes(address, request.missed_tokens * bpt))
                    if actual != request.missed_layer_crc32c[layer]:
                        core.count_checksum_failure("peer")
                        raise AgentError(
                            grpc.StatusCode.DATA_LOSS,
                            f"missed-token KV of layer {layer} failed verification after the transfer",
                        )
        except ChecksumMismatch as exc:
            raise AgentError(
                grpc.StatusCode.DATA_LOSS, f"merge verification failed: {exc}"
            ) from exc
        return agent_pb2.MergeResponse(
            bytes_merged=region_layout.nbytes,
            bytes_from_peer=from_peer,
            bytes_from_staging=from_staging,
        )

    def _persist(
        self,
        layout: BlockLayout,
        new_blocks: list[BlockPlan],
        region: Region,
        region_layout: RegionLayout,
        persist: bool,
    ) -> agent_pb2.MergeResponse:
        """Write back the new full blocks (dense bytes gathered layer by layer)."""
        reply = agent_pb2.MergeResponse()
        if not persist:
            return reply
        bpt = layout.bytes_per_token_layer
        for b in new_blocks:
            t0 = time.monotonic()
            data = b"".join(
                bytes(
                    self.core.device_bytes(
                        region.address + region_layout.offset(layer, b.first_token), b.tokens * bpt
                    )
                )
                for layer in range(layout.layers)
            )
            try:
                written = self.core.store.put(b.block_hash, b.parent_hash, layout, b.tokens, data)
            except (StoreFull, OSError) as exc:
                reply.persist_error = f"block {b.block_hash.hex()}: {exc}"
                log.error("persist failed", extra={"error": reply.persist_error})
                break
            if written:
                reply.blocks_persisted += 1
                self.metrics.bytes.labels("merge", "storage", "out").inc(len(data))
                self.metrics.persist_seconds.observe(time.monotonic() - t0)
            else:
                reply.blocks_already_present += 1
        return reply

    # ----- tooling: PutBlocks, ReadBlock, ReadRegion -------------------------------------------
    def PutBlocks(
        self, request_iterator: Iterator[agent_pb2.BlockChunk], context: grpc.ServicerContext
    ) -> Any:
        return self._unary("put_blocks", context, lambda: self._put_blocks(request_iterator))

    def _put_blocks(self, chunks: Iterator[agent_pb2.BlockChunk]) -> agent_pb2.PutBlocksResponse:
        reply = agent_pb2.PutBlocksResponse()
        current: dict[str, Any] | None = None
        index = -1

        def finish() -> None:
            assert current is not None
            field = f"blocks[{index}]"
            data = current["data"]
            if len(data) != current["total"]:
                raise ValueError(
                    f"{field}: received {len(data)} bytes, total_bytes says {current['total']}"
                )
            if not current["synthetic"] and crc32c(data) != current["crc"]:
                raise ValueError(f"{field}.crc32c does not match the data (corrupted in transit)")
            ref = current["ref"]
            if self.core.store.put(
                ref.block_hash, ref.parent_hash, current["layout"], ref.tokens, data
            ):
                reply.blocks_written += 1
                self.metrics.bytes.labels("put", "storage", "out").inc(len(data))
            else:
                reply.blocks_already_present += 1

        for chunk in chunks:
            if chunk.HasField("ref"):
                if current is not None:
                    finish()
                index += 1
                field = f"blocks[{index}]"
                layout = parse_layout(chunk.layout, f"{field}.layout")
                from dualpath_agent.validation import check_ref

                check_ref(chunk.ref, layout, field)
                expected = layout.block_bytes(chunk.ref.tokens)
                if chunk.total_bytes != expected:
                    raise ValueError(
                        f"{field}.total_bytes is {chunk.total_bytes}; {layout.layers} layers x "
                        f"{chunk.ref.tokens} tokens x {layout.bytes_per_token_layer} bytes = {expected}"
                    )
                data = bytearray(chunk.data)
                if chunk.synthetic:
                    data = bytearray(
                        kvgen.block_bytes(chunk.ref.block_hash, layout, chunk.ref.tokens)
                    )
                current = {
                    "ref": chunk.ref,
                    "layout": layout,
                    "total": expected,
                    "crc": chunk.crc32c,
                    "synthetic": chunk.synthetic,
                    "data": data,
                }
            else:
                if current is None:
                    raise ValueError("blocks[0]: the first chunk must carry ref and layout")
                current["data"] += chunk.data
                if len(current["data"]) > current["total"]:
                    raise ValueError(f"blocks[{index}]: more data than total_bytes")
        if current is not None:
            finish()
        return reply

    def ReadBlock(self, request: agent_pb2.ReadBlockRequest, context: grpc.ServicerContext) -> Any:
        return self._stream("read_block", context, self._read_block(request))

    def _read_block(
        self, request: agent_pb2.ReadBlockRequest
    ) -> Iterator[agent_pb2.ReadBlockChunk]:
        from dualpath_agent.blockhash import validate_hash

        validate_hash(request.block_hash, "block_hash")
        layout = parse_layout(request.layout) if request.HasField("layout") else None
        layer = request.layer if request.HasField("layer") else None
        header, data = self.core.store.read_block(request.block_hash, layer, layout)
        self.metrics.bytes.labels("read_block", "storage", "in").inc(len(data))
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            last = start + CHUNK >= len(data)
            yield agent_pb2.ReadBlockChunk(
                data=bytes(view[start : start + CHUNK]),
                layer_crc32c=(
                    [header.layer_crcs[layer]] if layer is not None else list(header.layer_crcs)
                )
                if last
                else [],
                tokens=header.tokens,
            )

    def ReadRegion(
        self, request: agent_pb2.ReadRegionRequest, context: grpc.ServicerContext
    ) -> Any:
        return self._stream("read_region", context, self._read_region(request))

    def _read_region(
        self, request: agent_pb2.ReadRegionRequest
    ) -> Iterator[agent_pb2.ReadRegionChunk]:
        require(request.request_id, "request_id")
        kind = {
            agent_pb2.RegionKind.REGION_KIND_LOAD: "load",
            agent_pb2.RegionKind.REGION_KIND_MERGED: "merged",
        }.get(request.kind)
        if kind is None:
            raise ValueError("kind must be REGION_KIND_LOAD or REGION_KIND_MERGED")
        held = self.core.held.get(request.request_id, kind)
        if held is None or held.region_layout is None or held.region is None:
            raise AgentError(
                grpc.StatusCode.NOT_FOUND, f"no {kind} region held for request {request.request_id}"
            )
        rl = held.region_layout
        start, length = 0, rl.nbytes
        if request.HasField("layer"):
            if request.layer >= rl.layers:
                raise ValueError(f"layer {request.layer} out of range 0..{rl.layers - 1}")
            start, length = rl.offset(request.layer, 0), rl.layer_stride
        for offset in range(0, length, CHUNK):
            n = min(CHUNK, length - offset)
            data = bytes(self.core.device_bytes(held.region.address + start + offset, n))
            yield agent_pb2.ReadRegionChunk(data=data, offset=offset, total_bytes=length)
