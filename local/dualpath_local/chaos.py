"""Chaos in the main job: `dualpath demo --chaos SPEC` kills or restarts processes of the
local stack at set times during each phase, and the report says what it cost.

SPEC is a comma-separated list of ACTION:TARGET@TIME, for example
`kill:decode-1@10s,restart:controller@20s`:

- `kill` sends SIGKILL (a node or process dying); the stack's supervisor brings the
  process back after its restart delay, on the same port, the way the kubelet restarts a
  pod's container.
- `restart` stops the process gracefully (SIGTERM, its grace period) and starts it again
  at once (a rolling update).

TARGET is `controller` or a node name (`prefill-0`, `decode-1`, ...: that node's agent).
TIME is seconds after the phase starts (`10s`, `2.5s` or `10`).

Parsing and the recovery figures are pure; `ChaosRun` applies the events on a thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger("dualpath.local.chaos")

Action = Literal["kill", "restart"]
ACTIONS: tuple[Action, ...] = ("kill", "restart")
CONTROLLER = "controller"
_EVENT = re.compile(r"^(?P<action>[a-z]+):(?P<target>[A-Za-z0-9_.-]+)@(?P<at>[0-9.]+)s?$")
# A phase is "recovered" once a window's throughput is back to this share of the phase's.
RECOVERED_SHARE = 0.8
RATE_WINDOW_S = 2.0


@dataclass(frozen=True)
class ChaosEvent:
    action: Action
    target: str
    at_s: float

    def __str__(self) -> str:
        return f"{self.action}:{self.target}@{self.at_s:g}s"


def parse_chaos(spec: str, targets: Sequence[str]) -> list[ChaosEvent]:
    """Parse SPEC; a bad event raises ValueError naming it and what was expected."""
    events = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        match = _EVENT.match(raw)
        if match is None:
            raise ValueError(
                f"chaos event {raw!r}: expected ACTION:TARGET@SECONDS (kill:decode-1@10s)"
            )
        action, target = match["action"], match["target"]
        if action not in ACTIONS:
            raise ValueError(f"chaos event {raw!r}: action must be one of {', '.join(ACTIONS)}")
        if target not in targets:
            raise ValueError(
                f"chaos event {raw!r}: target must be one of {', '.join(sorted(targets))}"
            )
        try:
            at_s = float(match["at"])
        except ValueError:
            raise ValueError(f"chaos event {raw!r}: {match['at']!r} is not a time") from None
        events.append(ChaosEvent(action, target, at_s))  # type: ignore[arg-type]
    if not events:
        raise ValueError("chaos spec is empty")
    return sorted(events, key=lambda e: e.at_s)


@dataclass
class AppliedEvent:
    event: ChaosEvent
    # Seconds after the phase started: when it was applied, and when the process was
    # serving again (None: not back before the phase ended).
    applied_s: float | None = None
    back_s: float | None = None
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "event": str(self.event),
            "applied_s": self.applied_s,
            "back_s": self.back_s,
            "down_s": None
            if self.applied_s is None or self.back_s is None
            else self.back_s - self.applied_s,
            "error": self.error,
        }


@dataclass(frozen=True)
class Recovery:
    """The throughput dip after an event and how long until the phase's rate was back."""

    baseline_turns_per_s: float
    dip_turns_per_s: float
    # Seconds from the event to the end of the first window back at RECOVERED_SHARE of
    # the baseline (0 when it never dropped below; None when it never came back).
    recovery_s: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "baseline_turns_per_s": self.baseline_turns_per_s,
            "dip_turns_per_s": self.dip_turns_per_s,
            "dip_share": self.dip_turns_per_s / self.baseline_turns_per_s
            if self.baseline_turns_per_s
            else None,
            "recovery_s": self.recovery_s,
        }


def recovery(
    completions_s: Sequence[float],
    event_s: float,
    wall_s: float,
    until_s: float | None = None,
    window_s: float = RATE_WINDOW_S,
) -> Recovery:
    """From the turns' completion times (seconds since the phase started): the phase's
    average rate (the baseline), the lowest rate of a sliding window starting at or after
    the event (and ending by `until_s`: the next event, default the phase's end), and when
    a window was back at RECOVERED_SHARE of the baseline."""
    baseline = len(completions_s) / wall_s if wall_s > 0 else 0.0
    times = sorted(completions_s)
    end = wall_s if until_s is None else min(until_s, wall_s)

    def rate(start: float) -> float:
        return sum(1 for t in times if start <= t < start + window_s) / window_s

    starts = []
    t = event_s
    while t + window_s <= end:
        starts.append(t)
        t += window_s / 8
    if not starts or baseline == 0:
        return Recovery(baseline, baseline, None if not starts else 0.0)
    rates = [rate(s) for s in starts]
    dip_index = min(range(len(rates)), key=rates.__getitem__)
    if rates[dip_index] >= RECOVERED_SHARE * baseline:
        return Recovery(baseline, rates[dip_index], 0.0)
    back = next(
        (
            s
            for s, r in zip(starts[dip_index:], rates[dip_index:], strict=True)
            if r >= RECOVERED_SHARE * baseline
        ),
        None,
    )
    return Recovery(baseline, rates[dip_index], None if back is None else back + window_s - event_s)


class ChaosTarget(Protocol):
    """What the chaos needs from a stack (LocalStack has it)."""

    def kill(self, target: str) -> None: ...

    def restart(self, target: str) -> None: ...

    def serving(self, target: str) -> bool: ...


@dataclass
class ChaosRun:
    """Applies one phase's events at their times on a thread; `stop()` ends it."""

    events: Sequence[ChaosEvent]
    stack: ChaosTarget
    clock: Callable[[], float] = time.monotonic
    applied: list[AppliedEvent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def start(self, phase_started: float) -> ChaosRun:
        self._started = phase_started
        self.applied = [AppliedEvent(e) for e in self.events]
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos")
        self._thread.start()
        return self

    def stop(self) -> list[AppliedEvent]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.applied

    def _now(self) -> float:
        return self.clock() - self._started

    def _run(self) -> None:
        pending: list[AppliedEvent] = []
        for applied in self.applied:
            # Until the event is due, watch the earlier ones come back.
            while self._now() < applied.event.at_s:
                if self._stop.wait(min(0.1, applied.event.at_s - self._now())):
                    return
                self._note_back(pending)
            self._apply(applied)
            pending.append(applied)
            self._note_back(pending)
        while pending and not self._stop.wait(0.1):
            self._note_back(pending)

    def _apply(self, applied: AppliedEvent) -> None:
        event = applied.event
        applied.applied_s = self._now()
        log.warning("chaos", extra={"event": str(event), "at_s": round(applied.applied_s, 2)})
        try:
            if event.action == "kill":
                self.stack.kill(event.target)
            else:
                self.stack.restart(event.target)
        except Exception as exc:  # reported, and the phase goes on
            applied.error = f"{type(exc).__name__}: {exc}"
            log.error("chaos event failed", extra={"event": str(event), "error": applied.error})

    def _note_back(self, pending: list[AppliedEvent]) -> None:
        for applied in list(pending):
            if applied.error or self.stack.serving(applied.event.target):
                if not applied.error:
                    applied.back_s = self._now()
                pending.remove(applied)
