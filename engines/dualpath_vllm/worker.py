"""Worker side of the DualPath connector (runs in vLLM's worker, beside the KV cache).

- register_kv_caches: the engine's KV-cache tensors registered with NIXL in this process
  (kv_cache.EngineKvCache), so agents write cached blocks straight into them.
- start_load_kv: one agent Load per request of the step, by the controller's read path,
  each on its own thread (the gRPC stream only reports the end, or an error).
- wait_for_layer_load: waits for that layer's notifications from every writer, only.
- wait_for_save: the step's completed full blocks go to an agent (PutBlocks), before the
  step's outputs are returned, so a decode engine asked next finds them.
- get_block_ids_with_load_errors: blocks of failed loads; vLLM recomputes them
  (kv_load_failure_policy "recompute"): a slower answer, never a wrong token.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from dualpath.v1 import agent_pb2
from dualpath_agent.blockfile import crc32c
from dualpath_agent.client import AgentClient, block_ref, layout_msg

from dualpath_vllm.config import ConnectorConfig
from dualpath_vllm.kv_cache import EngineKvCache, LoadFailed, describe_layer
from dualpath_vllm.metadata import DualPathMetadata, LoadJob, SaveJob
from dualpath_vllm.stats import DualPathStats

log = logging.getLogger(__name__)


@dataclass
class ActiveLoad:
    job: LoadJob
    transfer_id: str
    thread: threading.Thread | None = None
    error: BaseException | None = None
    failed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    def failure(self) -> BaseException | None:
        return self.error


class DualPathWorker:
    def __init__(self, config: ConnectorConfig, block_size: int, num_blocks: int) -> None:
        self.config = config
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.cache: EngineKvCache | None = None
        self.tensors: list[Any] = []
        self.layer_index: dict[str, int] = {}
        self._clients: dict[str, AgentClient] = {}
        # Loads this step's forward waits for (layerwise), and loads vLLM parked their
        # requests for (async) until get_finished reports them.
        self._active: list[ActiveLoad] = []
        self._parked: list[ActiveLoad] = []
        self._failed_blocks: set[int] = set()
        # Counted since vLLM last collected them (get_stats).
        self.stats = DualPathStats()

    # ----- registration -----------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        self.layer_index = {name: i for i, name in enumerate(kv_caches)}
        self.tensors = list(kv_caches.values())
        first = self.tensors[0]
        layers = [
            describe_layer(
                tuple(t.shape), tuple(t.stride()), t.element_size(), t.data_ptr(), self.num_blocks
            )
            for t in self.tensors
        ]
        mem_type = "VRAM" if first.is_cuda else "DRAM"
        device = (first.device.index or 0) if first.is_cuda else 0
        # A name of its own per process: agents know peers by name, and a restarted engine
        # registers new memory under new metadata.
        name = f"{self.config.engine_id}-kv-{uuid.uuid4().hex[:8]}"
        self.cache = EngineKvCache(name, layers, self.block_size, mem_type, device)

    # ----- loads ------------------------------------------------------------------------
    def start_load_kv(self, meta: DualPathMetadata) -> None:
        cache = self._cache()
        for job in meta.loads:
            target = cache.target(job.block_ids)
            remote = job.remote_blocks
            cache.expect(target, len(job.blocks) - remote, remote)
            load = ActiveLoad(job, target.transfer_id)
            request = agent_pb2.LoadRequest(
                request_id=f"{job.request_id}-{target.transfer_id[:8]}",
                blocks=[block_ref(b) for b in job.blocks],
                layout=layout_msg(cache.layout),
                read_path=job.read_path.proto,
                de_read_fraction=job.de_read_fraction,
                decode_agent_endpoint=job.decode_agent_endpoint,
                engine_target=target.to_proto(),
                handoff=job.handoff,
            )
            load.thread = threading.Thread(
                target=self._run_load, args=(load, request), daemon=True, name="dualpath-load"
            )
            load.thread.start()
            (self._parked if job.asynchronous else self._active).append(load)
            self.stats.count("loads")

    def _run_load(self, load: ActiveLoad, request: agent_pb2.LoadRequest) -> None:
        try:
            client = self._client(self.config.agent_endpoint)
            for _ in client.stub.Load(request, timeout=self.config.load_timeout_s):
                pass
        except grpc.RpcError as exc:
            load.error = RuntimeError(f"{exc.code().name}: {exc.details()}")
        except BaseException as exc:
            load.error = exc
        finally:
            load.done.set()

    def wait_for_layer_load(self, layer_name: str) -> None:
        layer = self.layer_index.get(layer_name)
        if layer is None or not self._active:
            return
        cache = self._cache()
        for load in self._active:
            if load.failed:
                continue
            remaining = self.config.load_timeout_s - (time.monotonic() - load.started)
            try:
                cache.wait_layer(load.transfer_id, layer, max(remaining, 0.0), load.failure)
            except LoadFailed as exc:
                self._fail(load, exc)

    def _fail(self, load: ActiveLoad, exc: BaseException) -> None:
        load.failed = True
        self._failed_blocks.update(load.job.block_ids)
        self.stats.count("load_failures")
        log.warning(
            "KV load of %s (%s, %d blocks) failed, vLLM recomputes them: %s",
            load.job.request_id,
            load.job.read_path.value,
            len(load.job.block_ids),
            exc,
            extra={
                "request_id": load.job.request_id,
                "read_path": load.job.read_path.value,
                "blocks": len(load.job.block_ids),
                "error": str(exc),
            },
        )

    def _finish_loads(self) -> set[str]:
        """End of the step: every load landed (or failed); release their bookkeeping.
        Returns the requests whose load failed."""
        cache = self._cache() if self._active else None
        for load in self._active:
            if not load.failed:
                # Every layer landed; the stream's final message follows at once.
                load.done.wait(self.config.rpc_timeout_s)
                if load.error is not None:
                    # Landed but the agent reported an error (a late checksum failure):
                    # nothing it wrote is trusted.
                    self._fail(load, load.error)
                else:
                    self.stats.count("blocks_loaded", len(load.job.blocks))
            if cache is not None:
                cache.forget(load.transfer_id)
        failed = {load.job.request_id for load in self._active if load.failed}
        self._active = []
        return failed

    def get_finished(self) -> set[str]:
        """Parked (async) loads that ended: landed, or failed (their blocks are reported
        as load errors in the same pass, and vLLM recomputes them)."""
        if not self._parked:
            return set()
        cache = self._cache()
        cache.poll()
        finished, still = set(), []
        for load in self._parked:
            elapsed = time.monotonic() - load.started
            landed = cache.layers_ready(load.transfer_id) == cache.layout.layers
            if load.done.is_set() and load.error is not None:
                self._fail(load, load.error)
            elif load.done.is_set() and landed:
                self.stats.count("blocks_loaded", len(load.job.blocks))
            elif elapsed > self.config.load_timeout_s:
                self._fail(load, LoadFailed(f"not landed within {self.config.load_timeout_s}s"))
            else:
                still.append(load)
                continue
            cache.forget(load.transfer_id)
            finished.add(load.job.request_id)
        self._parked = still
        return finished

    def get_stats(self) -> DualPathStats | None:
        """What was counted since the last call (vLLM aggregates and exports it)."""
        if self.stats.is_empty():
            return None
        stats, self.stats = self.stats, DualPathStats()
        return stats

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    # ----- saves ------------------------------------------------------------------------
    def wait_for_save(self, meta: DualPathMetadata) -> None:
        failed_requests = self._finish_loads()
        for job in meta.saves:
            if job.request_id in failed_requests:
                continue  # computed over a failed load: never persist it
            try:
                self._save(job)
            except grpc.RpcError as exc:
                # A block not persisted is a future cache miss, never a wrong answer.
                self.stats.count("save_failures")
                log.warning(
                    "persisting %d new blocks of %s through %s failed: %s",
                    len(job.blocks),
                    job.request_id,
                    job.agent_endpoint,
                    exc.details(),
                    extra={
                        "request_id": job.request_id,
                        "agent": job.agent_endpoint,
                        "error": f"{exc.code().name}: {exc.details()}",
                    },
                )

    def _save(self, job: SaveJob) -> None:
        cache = self._cache()
        layout = cache.layout
        images = [self._block_image(block_id) for block_id in job.block_ids]

        def chunks() -> Any:
            for block, data in zip(job.blocks, images, strict=True):
                yield agent_pb2.BlockChunk(
                    ref=block_ref(block),
                    total_bytes=len(data),
                    data=data,
                    crc32c=crc32c(data),
                    layout=layout_msg(layout),
                )

        client = self._client(job.agent_endpoint)
        client.stub.PutBlocks(chunks(), timeout=self.config.rpc_timeout_s)
        self.stats.count("blocks_saved", len(job.blocks))

    def _block_image(self, block_id: int) -> bytes:
        """One engine block as a stored Full Block: layer-major, each layer its planes."""
        parts = []
        for tensor in self.tensors:
            if tensor.shape[0] == self.num_blocks:  # (num_blocks, 2, ...): one plane
                parts.append(_host_bytes(tensor[block_id]))
            else:  # (2, num_blocks, ...): K plane, then V plane
                parts.append(_host_bytes(tensor[0, block_id]))
                parts.append(_host_bytes(tensor[1, block_id]))
        return b"".join(parts)

    # ----- helpers ----------------------------------------------------------------------
    def _cache(self) -> EngineKvCache:
        if self.cache is None:
            raise RuntimeError("register_kv_caches was not called")
        return self.cache

    def _client(self, endpoint: str) -> AgentClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = AgentClient(
                endpoint, self.config.rpc_timeout_s, identity=self.config.identity()
            )
        return client

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        if self.cache is not None:
            self.cache.close()


def _host_bytes(tensor: Any) -> bytes:
    """Raw bytes of a (contiguous) tensor slice, copied to the host when on a GPU."""
    import torch

    t = tensor.contiguous()
    if t.is_cuda:
        t = t.cpu()
    return bytes(t.view(-1).view(torch.uint8).numpy())
