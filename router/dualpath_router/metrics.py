"""Prometheus metrics of the router, in a registry of its own (several routers can live in
one test process), served on the router's own port at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip

# Request outcomes (label values of requests_total and request_seconds).
OK = "ok"
INVALID = "invalid"  # the client's request was refused (4xx from the router)
ENGINE_REJECTED = "engine_rejected"  # an engine answered 4xx (passed through)
ENGINE_ERROR = "engine_error"  # an engine was unreachable or failed (503)
CONTROLLER_ERROR = "controller_error"  # the traffic controller could not schedule (503)
DISCONNECTED = "client_disconnected"
ROUTER_ERROR = "router_error"  # a bug in the router (500)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_seconds = Histogram(
            "dualpath_router_request_seconds",
            "Time from a request's arrival to the last byte of its answer",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft_seconds = Histogram(
            "dualpath_router_ttft_seconds",
            "Time from a request's arrival to the first byte of the decode engine's answer",
            ["endpoint", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "dualpath_router_requests_total",
            "Requests by read path the controller chose (none: not scheduled) and outcome",
            ["endpoint", "read_path", "outcome"],
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "dualpath_router_engine_errors_total",
            "Failed calls to an engine, by kind (unreachable, http_5xx, http_4xx, stream)",
            ["engine", "kind"],
            registry=self.registry,
        )
        self.controller_errors = Counter(
            "dualpath_router_controller_errors_total",
            "Failed traffic-controller operations, by gRPC status code",
            ["operation", "code"],
            registry=self.registry,
        )
        self.lookup_failures = Counter(
            "dualpath_router_prefix_lookup_failures_total",
            "Prefix lookups an agent failed (the prompt then counts as not cached)",
            ["agent", "code"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "dualpath_router_prompt_tokens_total",
            "Prompt tokens of scheduled requests",
            registry=self.registry,
        )
        self.cached_tokens = Counter(
            "dualpath_router_cached_tokens_total",
            "Prompt tokens found in the KV store (loaded, not computed)",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dualpath_router_requests_in_flight",
            "Requests scheduled at the controller and not yet completed or cancelled",
            registry=self.registry,
        )
        self.engines_file_reloads = Counter(
            "dualpath_router_engines_file_reloads_total",
            "Changes of --engines-file read: applied, or invalid (engines left as they were)",
            ["outcome"],
            registry=self.registry,
        )
        self.engine_up = Gauge(
            "dualpath_router_engine_up",
            "1 when the engine's last metrics poll succeeded",
            ["engine", "role"],
            registry=self.registry,
        )
