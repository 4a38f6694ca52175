"""ServeLayers (decode side): read the requested blocks from this node's storage in groups
and write each group, layer by layer, into the target (a peer agent's request region or an
engine's KV cache) while the next group is read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from queue import Queue
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from dualpath.v1 import agent_pb2

from dualpath_agent.core import AgentCore
from dualpath_agent.engine_target import (
    REMOTE_PART,
    EngineTarget,
    layer_tag,
    parse_engine_target,
)
from dualpath_agent.held import HeldStaged
from dualpath_agent.layout import BlockLayout
from dualpath_agent.messages import checksums_msg
from dualpath_agent.staging import Staged
from dualpath_agent.transport import LayerWrites
from dualpath_agent.transport.base import settle
from dualpath_agent.validation import check_layer_span, parse_layout, plan_blocks, require

if TYPE_CHECKING:
    from dualpath_agent.service import AgentService


def groups_of(sizes: Sequence[int], group_bytes: int) -> list[list[int]]:
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


class GroupPoster:
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
        settle(self.pending, 1.0, "serve-layers write")
        self.pending.clear()
        self._release_prepared()


def serve_layers(
    svc: AgentService, request: agent_pb2.ServeLayersRequest, context: grpc.ServicerContext
) -> Iterator[agent_pb2.ServeLayersProgress]:
    core = svc.core
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
            raise ValueError(f"target_layer_stride {request.target_layer_stride} < {span} bytes")
        check_layer_span(
            request.target_address,
            request.target_layer_stride,
            layout.layers,
            span,
            "target_address",
        )
        metadata = request.target_metadata
    groups = groups_of(
        [layout.file_bytes(b.tokens) for b in blocks], core.config.stream_group_bytes
    )
    with core.activity() as cancel:
        context.add_callback(cancel.set)
        peer = svc.add_peer(metadata)
        poster = GroupPoster(core, peer, request, layout, cancel, engine, len(groups))
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
                        checksums=checksums_msg(
                            staged.blocks, [h.layer_crcs for h in staged.headers]
                        ),
                    )
                    # Written by the poster thread while this one reads the next group.
                    poster.submit(g, staged, indices[0])
            sent = poster.finish(core.config.transfer_timeout_s)
            svc.metrics.bytes.labels("de_read", "peer", "out").inc(sent)
            if request.keep_for_merge:
                for staged in staged_groups:
                    staged.kept = True
                core.held.put(
                    request.request_id,
                    HeldStaged(expires_at=svc.hold_deadline(), staged=staged_groups),
                )
                kept = True
            svc.metrics.serve_seconds.observe(time.monotonic() - started)
            yield agent_pb2.ServeLayersProgress(
                request_id=request.request_id, done=True, bytes_sent=sent
            )
        finally:
            # Never free the staging area under a transfer that may still read it.
            poster.abort()
            if not kept:
                for staged in staged_groups:
                    staged.release()
