"""Load into an engine's own KV cache (LoadRequest.engine_target), prefill side.

The blocks this agent reads (PE_READ, the local share of SPLIT, a P/D hand-off) are staged
in its host buffer, verified, and written layer by layer into the engine's blocks with
NIXL; the decode agent's share (DE_READ, SPLIT) is asked of it with ServeLayers carrying
the same target, so those bytes go decode node -> engine without touching this agent. Each
writer follows every layer with a notification the engine counts (engine_target.py); this
stream only reports when both parts are done, or why one failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from dualpath.v1 import agent_pb2, traffic_controller_pb2

from dualpath_agent.buffer import Cancelled
from dualpath_agent.engine_target import (
    LOCAL_PART,
    EngineTarget,
    layer_tag,
    parse_engine_target,
)
from dualpath_agent.errors import PATH_LABEL, PeerFailed
from dualpath_agent.layout import BlockLayout
from dualpath_agent.messages import block_refs
from dualpath_agent.plan import BlockPlan
from dualpath_agent.transport import release_logged
from dualpath_agent.transport.base import settle
from dualpath_agent.validation import de_block_count, parse_layout, plan_blocks, require

if TYPE_CHECKING:
    from dualpath_agent.service import AgentService

HANDOFF_LABEL = "handoff"


def load_into_engine(
    service: AgentService, request: agent_pb2.LoadRequest, context: grpc.ServicerContext
) -> Iterator[agent_pb2.LoadProgress]:
    """The Load RPC's stream; a generator, so that validation errors end the stream with
    their status like any other."""
    yield from EngineLoad(service, request).run(context)


class EngineLoad:
    """One Load into an engine: its parts run on their own threads."""

    def __init__(self, service: AgentService, request: agent_pb2.LoadRequest) -> None:
        self.service, self.core, self.request = service, service.core, request
        require(request.request_id, "request_id")
        if request.missed_tokens:
            raise ValueError("missed_tokens must be 0 with engine_target (the engine computes)")
        if request.keep_for_merge or request.release_after_load:
            raise ValueError(
                "keep_for_merge and release_after_load do not apply with engine_target "
                "(nothing is held by the agent)"
            )
        self.layout: BlockLayout = parse_layout(request.layout)
        self.blocks: list[BlockPlan] = plan_blocks(request.blocks, self.layout, full_only=True)
        self.target: EngineTarget = parse_engine_target(
            request.engine_target, self.layout, len(self.blocks)
        )
        self.n_remote = de_block_count(
            request.read_path, request.de_read_fraction, len(self.blocks)
        )
        if request.handoff and request.read_path != traffic_controller_pb2.READ_PATH_PE_READ:
            raise ValueError("handoff loads read the node's own store: read_path must be PE_READ")
        if self.n_remote and not request.decode_agent_endpoint:
            raise ValueError("decode_agent_endpoint is required for DE_READ and SPLIT")
        self.label = HANDOFF_LABEL if request.handoff else PATH_LABEL[request.read_path]
        self.errors: list[BaseException] = []
        self.bytes = {"local": 0, "remote": 0}
        self.remote_storage_read_s = 0.0
        self.local_storage_read_s = 0.0

    def run(self, context: grpc.ServicerContext) -> Iterator[agent_pb2.LoadProgress]:
        started = time.monotonic()
        core = self.core
        peer = self.service.add_peer(self.target.agent_metadata)
        local = self.blocks[self.n_remote :]
        with core.activity() as cancel:
            context.add_callback(cancel.set)
            threads = []
            if local:
                threads.append(
                    threading.Thread(
                        target=self._guard, args=(self._write_local, peer, cancel), daemon=True
                    )
                )
            if self.n_remote:
                threads.append(
                    threading.Thread(
                        target=self._guard, args=(self._serve_remote, cancel), daemon=True
                    )
                )
            for t in threads:
                t.start()
            for t in threads:
                # A part that fails cancels the other, which then ends within its timeout.
                while t.is_alive():
                    t.join(0.05)
                    if cancel.is_set() and not self.errors:
                        self.errors.append(Cancelled("load cancelled"))
            if self.errors:
                raise self.errors[0]
        elapsed = time.monotonic() - started
        self.service.metrics.load_seconds.labels(self.label).observe(elapsed)
        total = self.bytes["local"] + self.bytes["remote"]
        yield agent_pb2.LoadProgress(
            request_id=self.request.request_id,
            layer=self.layout.layers - 1,
            layers_ready=self.layout.layers,
            done=True,
            bytes_loaded=total,
            bytes_total=total,
            bytes_from_local_storage=self.bytes["local"],
            bytes_from_peer=self.bytes["remote"],
            blocks_verified=len(self.blocks),
            elapsed_s=elapsed,
            blocks_local=len(local),
            blocks_remote=self.n_remote,
            read_path=self.request.read_path,
            remote_storage_read_s=self.remote_storage_read_s,
            local_storage_read_s=self.local_storage_read_s,
        )

    def _guard(self, part: Any, *args: Any) -> None:
        cancel: threading.Event = args[-1]
        try:
            part(*args)
        except BaseException as exc:
            self.errors.append(exc)
            cancel.set()

    def _write_local(self, peer: str, cancel: threading.Event) -> None:
        """Stage the local blocks (verified) and write every layer into the engine."""
        core, layout = self.core, self.layout
        target = self.target.subset(self.n_remote, len(self.blocks))
        storage_nic = not self.request.handoff
        local = self.blocks[self.n_remote :]
        started = time.monotonic()
        with core.stage(local, layout, cancel, self.label, storage_nic) as staged:
            self.local_storage_read_s = time.monotonic() - started
            rows = target.write_rows(
                [staged.layer_address(i, 0) for i in range(len(local))],
                [h.layer_stride for h in staged.headers],
            )
            writes = core.peer.prepare_layer_writes(peer, rows, target.mem_type, "DRAM")
            pending: list[Any] = []
            try:
                for layer in range(layout.layers):
                    tag = layer_tag(target.transfer_id, layer, LOCAL_PART, 0, 1)
                    pending.append(writes.post(layer, tag))
                for handle in pending:
                    handle.wait(core.config.transfer_timeout_s, cancel)
                pending.clear()
            finally:
                # Never free the staging area under a write that may still read it.
                settle(pending, 1.0, "engine write")
                writes.release()
        nbytes = layout.layers * len(local) * layout.block_tokens * layout.bytes_per_token_layer
        self.bytes["local"] = nbytes
        self.service.metrics.bytes.labels(self.label, "engine", "out").inc(nbytes)

    def _serve_remote(self, cancel: threading.Event) -> None:
        """Ask the decode agent to write its share straight into the engine."""
        request = self.request
        endpoint = request.decode_agent_endpoint
        remote = self.blocks[: self.n_remote]
        serve = agent_pb2.ServeLayersRequest(
            request_id=request.request_id,
            blocks=block_refs(remote),
            layout=request.layout,
            transfer_id=self.target.transfer_id,
            engine_target=self.target.subset(0, self.n_remote).to_proto(),
        )
        call = self.service.peers.stub(endpoint).ServeLayers(
            serve, timeout=self.core.config.transfer_timeout_s * 4
        )
        finished = threading.Event()
        watcher = threading.Thread(
            target=_cancel_on, args=(cancel, finished, call), daemon=True, name="serve-watch"
        )
        watcher.start()
        try:
            for msg in call:
                if msg.staged:
                    self.remote_storage_read_s = msg.storage_read_s
                if msg.done:
                    self.bytes["remote"] = msg.bytes_sent
        except grpc.RpcError as exc:
            raise PeerFailed(endpoint, exc) from exc
        finally:
            finished.set()


def _cancel_on(cancel: threading.Event, finished: threading.Event, call: Any) -> None:
    """Cancel the decode agent's stream when this load is cancelled (a blocking read of the
    stream cannot watch the event itself)."""
    while not finished.wait(0.05):
        if cancel.is_set():
            release_logged(call.cancel, "decode agent stream cancel")
            return
