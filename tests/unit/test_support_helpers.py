"""The shared test helpers: `wait_for` (tests/support/wait.py) and `sample_value`
(tests/support/metrics.py), which must raise for a metric that is not exported."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.support.metrics import MissingMetric, sample_value
from tests.support.wait import WaitTimeout, wait_for


def exposition() -> tuple[str, Counter]:
    registry = CollectorRegistry()
    calls = Counter("dp_calls", "calls", ["method"], registry=registry)
    Gauge("dp_open", "open", registry=registry).set(2)
    Histogram("dp_seconds", "time", registry=registry).observe(0.5)
    return generate_latest(registry).decode(), calls


def test_sample_value_reads_series_and_sums_over_unnamed_labels():
    registry = CollectorRegistry()
    calls = Counter("dp_calls", "calls", ["method", "code"], registry=registry)
    calls.labels("a", "OK").inc(2)
    calls.labels("a", "ERR").inc(1)
    calls.labels("b", "OK").inc(4)
    text = generate_latest(registry).decode()
    assert sample_value(text, "dp_calls_total", {"method": "a", "code": "OK"}) == 2
    assert sample_value(text, "dp_calls_total", 'method="a",code="ERR"') == 1
    assert sample_value(text, "dp_calls_total", {"method": "a"}) == 3
    assert sample_value(text, "dp_calls_total") == 7


def test_an_exported_family_without_the_series_reads_zero():
    text, _ = exposition()
    assert sample_value(text, "dp_calls_total", {"method": "never"}) == 0.0
    assert sample_value(text, "dp_open") == 2
    assert sample_value(text, "dp_seconds_count") == 1


@pytest.mark.parametrize(
    "name",
    ["dp_renamed_total", "dp_calls", "dp_open_total", "dp_seconds"],
    ids=["renamed", "counter-without-total", "gauge-with-total", "histogram-family"],
)
def test_a_metric_that_is_not_exported_raises(name):
    text, _ = exposition()
    with pytest.raises(MissingMetric, match=name):
        sample_value(text, name)


def test_wait_for_returns_the_probe_value_once_truthy():
    counter = itertools.count()
    assert (
        wait_for("the third poll", lambda: next(counter) >= 2 and "done", 5, interval=0) == "done"
    )


def test_wait_for_times_out_with_the_last_error_and_the_explanation():
    def probe() -> bool:
        raise ConnectionRefusedError("not up")

    with pytest.raises(WaitTimeout) as err:
        wait_for("the server", probe, 0.2, interval=0.01, explain=lambda: "its log: nothing")
    text = str(err.value)
    assert "the server" in text and "ConnectionRefusedError: not up" in text
    assert "its log: nothing" in text


def test_wait_for_stops_at_once_on_an_assertion_or_an_error_not_retried():
    def failing() -> bool:
        raise AssertionError("definite")

    with pytest.raises(AssertionError, match="definite"):
        wait_for("x", failing, 30)

    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_for("x", broken, 30, retry_on=(ConnectionError,))


def test_wait_for_fails_at_once_when_alive_raises():
    def dead() -> None:
        raise RuntimeError("the agent exited with 1")

    with pytest.raises(RuntimeError, match="exited"):
        wait_for("x", lambda: False, 30, dead)
