"""Prometheus metrics of one agent (its own registry, so several agents can share a process
in tests). Event counters and histograms are updated by the service; values that already
live elsewhere (store size, read queue, buffer space) are read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Snapshot:
    """What the scrape-time collector reads from the agent."""

    read_queue_length: int
    read_queue_bytes: int
    read_queue_tokens: int
    snic_inflight_bytes: int
    snic_read_bytes_per_s: float
    store_blocks: int
    store_bytes: int
    capacity_bytes: int
    evictions: int
    store_checksum_failures: int
    buffer_free: dict[str, int]
    buffer_total: dict[str, int]
    held_requests: int
    active_transfers: int
    peer_transport: str
    storage_transport: str
    fallback_reason: str
    device_tier: str
    qos_applied: dict[str, str]


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._snapshot()
        yield _gauge(
            "dualpath_agent_read_queue_length",
            "Storage reads queued or in progress (read_q)",
            s.read_queue_length,
        )
        yield _gauge(
            "dualpath_agent_read_queue_bytes",
            "Bytes the queued storage reads still have to read",
            s.read_queue_bytes,
        )
        yield _gauge(
            "dualpath_agent_read_queue_tokens",
            "Tokens whose KV the queued storage reads still have to load",
            s.read_queue_tokens,
        )
        yield _gauge(
            "dualpath_agent_snic_read_cap_bytes_per_second",
            "Storage read cap of this agent (0 = none)",
            s.snic_read_bytes_per_s,
        )
        yield _gauge(
            "dualpath_agent_snic_inflight_bytes",
            "Bytes being read through the storage NIC now",
            s.snic_inflight_bytes,
        )
        yield _gauge("dualpath_agent_store_blocks", "Blocks in the store index", s.store_blocks)
        yield _gauge(
            "dualpath_agent_store_bytes", "Bytes of block files in the store", s.store_bytes
        )
        yield _gauge(
            "dualpath_agent_store_capacity_bytes",
            "Store capacity (0 = unlimited)",
            s.capacity_bytes,
        )
        evictions = CounterMetricFamily("dualpath_agent_evictions", "Blocks evicted to make room")
        evictions.add_metric([], s.evictions)
        yield evictions
        free = GaugeMetricFamily(
            "dualpath_agent_buffer_free_bytes", "Free buffer bytes by tier", labels=["tier"]
        )
        total = GaugeMetricFamily(
            "dualpath_agent_buffer_total_bytes", "Buffer bytes by tier", labels=["tier"]
        )
        for tier, value in s.buffer_free.items():
            free.add_metric([tier], value)
            total.add_metric([tier], s.buffer_total[tier])
        yield free
        yield total
        yield _gauge(
            "dualpath_agent_held_requests", "Requests holding buffer space", s.held_requests
        )
        yield _gauge(
            "dualpath_agent_active_transfers",
            "Loads, serves and merges in progress",
            s.active_transfers,
        )
        info = GaugeMetricFamily(
            "dualpath_agent_transport_info",
            "Transports in use (value 1); fallback=true when NIXL is not used",
            labels=["peer", "storage", "fallback", "device_tier"],
        )
        fallback = "true" if s.fallback_reason else "false"
        info.add_metric([s.peer_transport, s.storage_transport, fallback, s.device_tier], 1)
        yield info
        yield _gauge(
            "dualpath_agent_fallback_active",
            "1 when a fallback transport is in use",
            int(bool(s.fallback_reason)),
        )
        qos = GaugeMetricFamily(
            "dualpath_agent_qos_applied",
            "QoS settings applied (value 1)",
            labels=["setting", "value"],
        )
        for setting, applied in s.qos_applied.items():
            qos.add_metric([setting, applied], 1)
        yield qos


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class AgentMetrics:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes = Counter(
            "dualpath_agent_bytes",
            "KV bytes moved, by read path / operation, tier and direction",
            ["path", "tier", "direction"],
            registry=r,
        )
        self.operations = Counter(
            "dualpath_agent_operations",
            "Operations by kind and result",
            ["op", "result"],
            registry=r,
        )
        self.checksum_failures = Counter(
            "dualpath_agent_checksum_failures",
            "Bytes that failed verification, by where they were checked",
            ["where"],
            registry=r,
        )
        self.peer_fallbacks = Counter(
            "dualpath_agent_peer_fallbacks",
            "Loads whose decode-side part was read from this agent's own storage after the "
            "decode agent failed, by read path and the peer's failure",
            ["path", "reason"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "dualpath_agent_load_seconds",
            "Load latency by read path",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_layer_seconds = Histogram(
            "dualpath_agent_first_layer_seconds",
            "Time until layer 0 is usable, by read path",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.storage_read_seconds = Histogram(
            "dualpath_agent_storage_read_seconds",
            "Storage read latency per request (queueing included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.serve_seconds = Histogram(
            "dualpath_agent_serve_layers_seconds",
            "ServeLayers latency (storage read + streaming)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.merge_seconds = Histogram(
            "dualpath_agent_merge_seconds",
            "Merge latency (including persisting)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.persist_seconds = Histogram(
            "dualpath_agent_persist_seconds",
            "Time to persist one block (write, fsync, rename)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for where in ("storage", "peer"):
            self.checksum_failures.labels(where)  # export zeros before the first failure
        r.register(_StateCollector(snapshot))
