"""An engine's load from vLLM's Prometheus /metrics text (pure functions).

vLLM exports `vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc` (0..1; `vllm:gpu_cache_usage_perc` in older versions) and
`vllm:cache_config_info` whose labels carry `num_gpu_blocks` and `block_size` (the KV
capacity). Series of several engine cores (data parallel) are summed, usages averaged.
vLLM has token counters (`vllm:prompt_tokens_total`, ...) but no gauge of the tokens its
unfinished requests hold; the KV usage times the capacity is that number, and the router
also knows the tokens of the requests it has in flight on the engine: tok_e is the larger.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualpath_controller.client import EngineLoad
from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_CONFIG = "vllm:cache_config_info"


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition format or lacks what the router needs."""


@dataclass(frozen=True)
class VllmStats:
    running: int
    waiting: int
    kv_usage: float  # 0..1
    # num_gpu_blocks x block_size from cache_config_info; None when not exported.
    kv_capacity_tokens: int | None


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except ValueError as exc:
        raise MetricsFormatError(f"not Prometheus text: {exc}") from None
    return out


def _capacity(series: list[tuple[dict[str, str], float]]) -> int | None:
    total = 0
    for labels, _ in series:
        try:
            total += int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError):
            return None
    return total or None


def parse_vllm_metrics(text: str) -> VllmStats:
    samples = _samples(text)
    missing = [name for name in (RUNNING, WAITING) if name not in samples]
    if missing:
        raise MetricsFormatError(f"missing {', '.join(missing)} (is this a vLLM server?)")
    usage_series = next((samples[n] for n in KV_USAGE if n in samples), [])
    usage = sum(v for _, v in usage_series) / len(usage_series) if usage_series else 0.0
    return VllmStats(
        running=round(sum(v for _, v in samples[RUNNING])),
        waiting=round(sum(v for _, v in samples[WAITING])),
        kv_usage=min(1.0, max(0.0, usage)),
        kv_capacity_tokens=_capacity(samples.get(CACHE_CONFIG, [])),
    )


@dataclass(frozen=True)
class NodeQueue:
    """The node's storage read queue, from its agent's Stat (zeros when unknown)."""

    length: int = 0
    tokens: int = 0
    bytes: int = 0
    snic_inflight_bytes: int = 0


def engine_load(
    stats: VllmStats,
    capacity_tokens: int,
    *,
    routed_requests: int = 0,
    routed_tokens: int = 0,
    node: NodeQueue | None = None,
) -> EngineLoad:
    """The LoadReport numbers: seq_e, tok_e, free HBM (tokens) and the node's read queue.
    `routed_*` are the router's own unfinished requests on the engine (a report replaces
    what the controller booked, so it must not report less than it knows is there)."""
    held = round(stats.kv_usage * capacity_tokens)
    node = node or NodeQueue()
    return EngineLoad(
        unfinished_requests=max(stats.running + stats.waiting, routed_requests),
        unfinished_tokens=max(held, routed_tokens),
        free_hbm_tokens=max(0, capacity_tokens - held),
        read_queue_length=node.length,
        read_queue_tokens=node.tokens,
        read_queue_bytes=node.bytes,
        snic_inflight_bytes=node.snic_inflight_bytes,
    )
