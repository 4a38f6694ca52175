"""Prometheus metrics of the endpoint picker. They live in the registry of the router parts
it runs (engine polling, prefix lookups, controller errors), so one /metrics shows all."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dualpath_router.metrics import LATENCY_BUCKETS

# Decision outcomes (label values of decisions_total).
PICKED = "picked"
NO_BODY = "picked_without_body"  # a request without a body (GET): any ready engine
INVALID = "invalid"  # 400: malformed body or protocol message
OVERLOADED = "overloaded"  # 429: the controller found no capacity (RESOURCE_EXHAUSTED)
NO_ENDPOINT = "no_endpoint"  # 503: no prefill engine, or none in the subset
UNAVAILABLE = "unavailable"  # 503: controller or tokenizer unreachable
ERROR = "error"  # 500: a bug

# How a scheduled request was released at the controller (the `kind` label)...
COMPLETE = "complete"
CANCEL = "cancel"
# ...and why (the `reason` label; the details go to the logs). ANSWERED is a Complete,
# every other reason a Cancel.
ANSWERED = "answered"
SCHEDULE_FAILED = "schedule_failed"
STREAM_ENDED = "stream_ended_before_response"
ENGINE_ERROR = "engine_error"
CONTROLLER_CHOICE = "controller_choice"
BAD_ASSIGNMENT = "bad_assignment"


class PickerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "dualpath_picker_decisions_total",
            "Endpoint picks by outcome (picked, invalid, overloaded, no_endpoint, ...)",
            ["outcome"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "dualpath_picker_decision_seconds",
            "Time from the last request body chunk to the picker's answer",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.picked = Counter(
            "dualpath_picker_picked_total",
            "Requests sent to each prefill engine, by the read path of their cached prefix",
            ["engine", "read_path"],
            registry=registry,
        )
        self.releases = Counter(
            "dualpath_picker_releases_total",
            "Scheduled requests released at the controller (complete, cancel) by reason",
            ["kind", "reason"],
            registry=registry,
        )
        self.streams = Gauge(
            "dualpath_picker_streams_open",
            "ext_proc streams (one per HTTP request) open now",
            registry=registry,
        )
        self.in_flight = Gauge(
            "dualpath_picker_requests_in_flight",
            "Requests scheduled at the controller and not yet completed or cancelled",
            registry=registry,
        )
        self.ready = Gauge(
            "dualpath_picker_ready",
            "1 when the controller answers and a prefill engine is up and in service",
            registry=registry,
        )
