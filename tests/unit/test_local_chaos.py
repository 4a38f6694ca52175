"""The demo's chaos spec and the recovery figures (pure)."""

from __future__ import annotations

import pytest
from dualpath_local.chaos import ChaosEvent, parse_chaos, recovery

TARGETS = ["controller", "prefill-0", "decode-0", "decode-1"]


def test_a_spec_parses_into_events_in_time_order():
    events = parse_chaos("restart:controller@20s, kill:decode-1@10", TARGETS)
    assert events == [
        ChaosEvent("kill", "decode-1", 10.0),
        ChaosEvent("restart", "controller", 20.0),
    ]
    assert str(events[0]) == "kill:decode-1@10s"
    assert parse_chaos("kill:prefill-0@2.5s", TARGETS)[0].at_s == 2.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("kill:decode-9@1s", "target must be one of"),
        ("explode:decode-0@1s", "action must be one of"),
        ("kill:decode-0", "expected ACTION:TARGET@SECONDS"),
        ("kill:decode-0@1.2.3s", "is not a time"),
        ("kill@decode-0:1s", "expected ACTION:TARGET@SECONDS"),
    ],
)
def test_a_bad_spec_names_the_event_and_what_was_expected(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_chaos(spec, TARGETS)


def test_recovery_measures_the_dip_and_when_the_rate_came_back():
    # 4 turns/s, nothing between 10 s and 13 s, then 4 turns/s again until 20 s.
    completions = [t / 4 for t in range(80) if not 10 <= t / 4 < 13]
    r = recovery(completions, event_s=10.0, wall_s=20.0)
    assert r.baseline_turns_per_s == pytest.approx(len(completions) / 20)
    assert r.dip_turns_per_s == 0.0
    # The baseline is 3.4 turns/s; the first 2 s window with >= 80% of it (>= 5.44
    # turns) is [12.5, 14.5): 6 turns. Back 4.5 s after the event.
    assert r.recovery_s == pytest.approx(4.5)


def test_recovery_without_a_dip_is_zero_and_without_a_comeback_is_none():
    steady = [t / 4 for t in range(80)]
    assert recovery(steady, event_s=5.0, wall_s=20.0).recovery_s == 0.0
    stalled = [t / 4 for t in range(40)]  # nothing after 10 s
    assert recovery(stalled, event_s=10.0, wall_s=20.0).recovery_s is None
    # An event too late for any full window after it: nothing to measure.
    assert recovery(steady, event_s=19.5, wall_s=20.0).recovery_s is None


def test_an_events_dip_is_measured_until_the_next_event():
    # Steady 4 turns/s except a stall at 12-14 s, caused by a second event at 12 s.
    completions = [t / 4 for t in range(80) if not 12 <= t / 4 < 14]
    first = recovery(completions, event_s=5.0, wall_s=20.0, until_s=12.0)
    assert first.recovery_s == 0.0 and first.dip_turns_per_s > 3
    assert recovery(completions, event_s=5.0, wall_s=20.0).dip_turns_per_s == 0.0
