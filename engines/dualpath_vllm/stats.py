"""The connector's counters, carried from both sides (scheduler and workers) through vLLM's
KVConnectorStats and exposed on the engine's own /metrics (vllm:dualpath_*), beside
vLLM's: failed lookups, loads, failed loads (recomputed by vLLM), loads retried from the
node's own storage, blocks loaded and saved, saves that failed (future cache misses).

Imports vLLM: used by the connector only, inside the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)
from vllm.v1.metrics.utils import create_metric_per_engine

# counter -> help text
COUNTERS = {
    "lookup_failures": "prefix lookups at the node's agent that failed (the prompt was computed)",
    "loads": "KV loads asked of the node's agent",
    "load_failures": "KV loads that failed; vLLM recomputed their blocks",
    "load_retries": "KV loads retried from the node's own storage after a failed one",
    "blocks_loaded": "KV blocks loaded into this engine's KV cache",
    "blocks_saved": "full KV blocks persisted through an agent",
    "save_failures": "saves that failed (the blocks become future cache misses)",
}


@dataclass
class DualPathStats(KVConnectorStats):
    def __post_init__(self) -> None:
        for name in COUNTERS:
            self.data.setdefault(name, 0)

    def count(self, name: str, n: int = 1) -> None:
        self.data[name] += n

    def reset(self) -> None:
        self.data = dict.fromkeys(COUNTERS, 0)

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for name in COUNTERS:
            self.data[name] += int(other.data.get(name, 0))
        return self

    def reduce(self) -> dict[str, int | float]:
        return {name: int(self.data[name]) for name in COUNTERS}

    def is_empty(self) -> bool:
        return not any(self.data[name] for name in COUNTERS)


class DualPathPromMetrics(KVConnectorPromMetrics):
    def __init__(
        self,
        vllm_config: Any,
        metric_types: dict[Any, Any],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self.counters = {
            name: create_metric_per_engine(
                self._counter_cls(
                    name=f"vllm:dualpath_{name}", documentation=text, labelnames=labelnames
                ),
                per_engine_labelvalues,
            )
            for name, text in COUNTERS.items()
        }

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name, per_engine in self.counters.items():
            value = int(transfer_stats_data.get(name, 0))
            if value:
                per_engine[engine_idx].inc(value)
