"""Load into a request region (prefill side): the blocks this agent reads from its own
storage and the decode agent's share (DE_READ, SPLIT), streamed layer by layer.

Threads: a Load starts one thread per part (local storage read, decode-side stream) and
yields a progress message each time a layer is complete on every part and verified. Errors
of any part cancel the others, except a failure of the decode agent: then this agent reads
the decode-side blocks from its own storage (the store is shared), counts it in
dualpath_agent_peer_fallbacks_total and reports the peer (AgentService.on_peer_failure).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from dualpath.v1 import agent_pb2

from dualpath_agent.blockfile import ChecksumMismatch
from dualpath_agent.buffer import Cancelled, Region
from dualpath_agent.errors import PATH_LABEL, AgentError, PeerFailed
from dualpath_agent.held import HeldLoad
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.messages import block_refs, layer_crcs_of, layout_msg
from dualpath_agent.plan import BlockPlan
from dualpath_agent.staging import copy_staged_layer_to_region
from dualpath_agent.transport import TransferError, release_logged
from dualpath_agent.validation import de_block_count, parse_layout, plan_blocks, require

if TYPE_CHECKING:
    from dualpath_agent.service import AgentService

log = logging.getLogger(__name__)


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
            release_logged(cb, "load cancel callback")

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


def _peer_failed(exc: BaseException) -> bool:
    """A failure of the decode agent or the path to it (refused, broken stream, timeout,
    overload, bytes that did not verify where they landed), as opposed to an answer about
    the request or the blocks, which reading them here would only repeat."""
    if isinstance(exc, PeerFailed):
        return exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if isinstance(exc, AgentError):
        return exc.code == grpc.StatusCode.DATA_LOSS  # landed bytes failed verification here
    return isinstance(exc, TransferError)


@dataclass(frozen=True)
class _Parts:
    """What every part of one Load shares: the region it fills and how it reports."""

    svc: AgentService
    request: agent_pb2.LoadRequest
    state: LoadState
    layout: BlockLayout
    region: Region
    region_layout: RegionLayout
    label: str

    def unpack(
        self,
    ) -> tuple[AgentService, LoadState, BlockLayout, Region, RegionLayout, str]:
        return self.svc, self.state, self.layout, self.region, self.region_layout, self.label


def load_region(
    svc: AgentService, request: agent_pb2.LoadRequest, context: grpc.ServicerContext
) -> Iterator[agent_pb2.LoadProgress]:
    core = svc.core
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
    if core.held.get(request.request_id, HeldLoad) is not None:
        raise AgentError(
            grpc.StatusCode.ALREADY_EXISTS, f"request {request.request_id} is already loaded"
        )
    remote, local = blocks[:n_remote], blocks[n_remote:]
    prefix_tokens = sum(b.tokens for b in blocks)
    region_layout = RegionLayout(
        layout.layers, prefix_tokens + request.missed_tokens, layout.bytes_per_token_layer
    )
    label = PATH_LABEL[request.read_path]
    part_names = [name for name, part in (("local", local), ("remote", remote)) if part]
    with core.activity() as cancel:
        context.add_callback(cancel.set)
        region = core.device_pool.allocate(
            region_layout.nbytes, core.config.allocation_timeout_s, cancel
        )
        state = LoadState(layout.layers, part_names)
        job = _Parts(svc, request, state, layout, region, region_layout, label)
        threads = []
        if local:
            threads.append(
                threading.Thread(
                    target=_load_local,
                    args=(job, local),
                    daemon=True,
                )
            )
        if remote:
            threads.append(
                threading.Thread(
                    target=_load_remote,
                    args=(job, remote),
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
                    svc.metrics.first_layer_seconds.labels(label).observe(
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
            svc.metrics.load_seconds.labels(label).observe(elapsed)
            if not request.release_after_load:
                core.held.put(
                    request.request_id,
                    HeldLoad(
                        expires_at=svc.hold_deadline(),
                        region=region,
                        region_layout=region_layout,
                        layout=layout,
                        blocks=blocks,
                        crcs=dict(state.crcs),
                        decode_endpoint=request.decode_agent_endpoint,
                        missed_reserved=request.missed_tokens,
                        prefix_tokens=prefix_tokens,
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


def _load_local(parts: _Parts, blocks: list[BlockPlan], part: str = "local") -> None:
    svc, state, layout, region, region_layout, label = parts.unpack()
    core = svc.core
    started = time.monotonic()
    try:
        with core.stage(blocks, layout, state.cancel, label) as staged:
            # Every byte was verified in the host buffer; layer i now goes to the device
            # tier (H2D on a GPU), the paper's layer-wise load from the PE buffer.
            state.timing[f"{part}_storage_read_s"] = time.monotonic() - started
            state.crcs.update(
                {b.block_hash: h.layer_crcs for b, h in zip(blocks, staged.headers, strict=True)}
            )
            indices = range(len(blocks))
            for layer in range(layout.layers):
                if state.cancel.is_set():
                    raise Cancelled("load cancelled")
                moved = copy_staged_layer_to_region(
                    core, staged, indices, layer, region.address, region_layout
                )
                svc.metrics.bytes.labels(label, "device", "in").inc(moved)
                state.layer_done(part, layer, moved)
                if part == "remote":
                    state.fallback_bytes += moved
        if part == "local":
            state.clean["local"] = True
    except BaseException as exc:
        state.fail(exc)


def _load_remote(parts: _Parts, blocks: list[BlockPlan]) -> None:
    """The decode-side part: the decode agent reads the blocks and writes them here. If
    it fails (refused, broken stream, timeout, bad bytes), this agent reads those blocks
    from its own storage instead (the store is shared), so the load still completes: a
    dead decode node costs this node's storage bandwidth, not the request."""
    svc, state, label, request = parts.svc, parts.state, parts.label, parts.request
    endpoint = request.decode_agent_endpoint
    cancels: list[Callable[[], Any]] = []
    try:
        _stream_from_peer(parts, blocks, cancels)
        return
    except Exception as exc:  # every peer failure falls back
        failure = _peer_error(endpoint, exc)
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
    svc.metrics.peer_fallbacks.labels(label, reason).inc()
    log.warning(
        "decode agent failed mid-load: reading its blocks from own storage",
        extra={
            "request_id": request.request_id,
            "decode_agent": endpoint,
            "blocks": len(blocks),
            "reason": state.fallback_reason,
        },
    )
    if svc.on_peer_failure is not None:
        svc.on_peer_failure(endpoint, state.fallback_reason)
    _load_local(parts, blocks, part="remote")


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
    parts: _Parts, blocks: list[BlockPlan], cancels: list[Callable[[], Any]]
) -> None:
    svc, state, layout, region, region_layout, label = parts.unpack()
    request = parts.request
    core = svc.core
    endpoint = request.decode_agent_endpoint
    transfer_id = uuid.uuid4().hex
    bpt = layout.bytes_per_token_layer
    first = blocks[0].first_token
    serve = agent_pb2.ServeLayersRequest(
        request_id=request.request_id,
        blocks=block_refs(blocks),
        layout=layout_msg(layout),
        target_agent=core.peer.name,
        target_metadata=core.peer.metadata(),
        target_mem_type=core.device_pool.mem_type,
        target_address=region.address + first * bpt,
        target_layer_stride=region_layout.layer_stride,
        transfer_id=transfer_id,
        keep_for_merge=request.keep_for_merge,
    )
    call = svc.peers.stub(endpoint).ServeLayers(serve, timeout=core.config.transfer_timeout_s * 4)
    cancels.append(call.cancel)
    state.on_cancel(call.cancel)
    # Waits for the peer's writes also end when its call does: a dead peer must not
    # be waited for until the transfer timeout.
    peer_gone = threading.Event()
    state.on_cancel(peer_gone.set)
    call.add_done_callback(lambda c: peer_gone.set() if c.code() != grpc.StatusCode.OK else None)
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
        part = _group_blocks(blocks, staged, layout)
        crcs = layer_crcs_of(staged.checksums)
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
            svc.metrics.bytes.labels(label, "peer", "in").inc(nbytes)
            if group == groups - 1:  # layer i of every group has landed
                state.timing["peer_stream_s"] = time.monotonic() - stream_started
                state.layer_done("remote", layer, 0)
            state.bytes["remote"] += nbytes
        group += 1
    state.timing["remote_storage_read_s"] = staged.storage_read_s
    # The rest of the stream only reports completion and errors.
    drainer = threading.Thread(
        target=_drain_serve_stream, args=(stream, state, endpoint), daemon=True
    )
    drainer.start()
    drainer.join(core.config.transfer_timeout_s)


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
