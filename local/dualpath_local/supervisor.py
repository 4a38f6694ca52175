"""Brings the local stack's processes back when they die, as the kubelet restarts a pod's
container: a node's agent or the controller found exited is started again on the same
port after a restart delay. Every restart is logged and counted; the demo reports them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from dualpath_local.stack import LocalStack

log = logging.getLogger("dualpath.local.supervisor")

CONTROLLER = "controller"


@dataclass
class Restart:
    target: str
    exited_at: float  # monotonic
    restarted_at: float = 0.0
    error: str = ""


class Supervisor:
    def __init__(
        self, stack: LocalStack, restart_delay_s: float = 1.0, poll_s: float = 0.1
    ) -> None:
        self.stack = stack
        self.restart_delay_s = restart_delay_s
        self.poll_s = poll_s
        self.restarts: list[Restart] = []
        self._down: dict[str, Restart] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="supervisor")

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising (before the stack is closed: its stops are not deaths)."""
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception:  # the supervisor must outlive any one failed restart
                log.exception("supervisor check failed")

    def check_once(self) -> None:
        now = time.monotonic()
        for target in self._exited():
            down = self._down.get(target)
            if down is None:
                self._down[target] = Restart(target, now)
                log.warning("process exited: restarting it", extra={"target": target})
            elif now - down.exited_at >= self.restart_delay_s and not self._stop.is_set():
                self._restart(down)

    def _exited(self) -> list[str]:
        stack = self.stack
        with stack.lifecycle:
            gone = [node for node, handle in stack.agents.items() if not handle.alive()]
            c = stack.controller
            if c is not None and c.proc is not None and c.proc.poll() is not None:
                gone.append(CONTROLLER)
        return gone

    def _restart(self, down: Restart) -> None:
        try:
            if down.target == CONTROLLER:
                self.stack.relaunch_controller()
            else:
                self.stack.relaunch_agent(down.target)
        except Exception as exc:  # e.g. the port is not free yet: try again next round
            down.error = f"{type(exc).__name__}: {exc}"
            down.exited_at = time.monotonic()
            log.error("restart failed", extra={"target": down.target, "error": down.error})
            return
        down.restarted_at = time.monotonic()
        self.restarts.append(down)
        del self._down[down.target]
