"""One real agent per role (nodes "node-p" and "node-d"), started side by side: the router
and the endpoint picker tests front the same two-node shape."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from dualpath_agent.launch import AgentHandle, start_agent


@contextlib.contextmanager
def prefill_and_decode_agents(work: Path) -> Iterator[tuple[AgentHandle, AgentHandle]]:
    """(prefill agent, decode agent), each with its own store under `work`; both stopped on
    exit, also when the other failed to start."""
    started: list[AgentHandle] = []
    errors: list[BaseException] = []

    def start(node: str, role: str) -> None:
        try:
            started.append(start_agent(node, role, work / node / "store", work / node))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=start, args=args)
        for args in (("node-p", "prefill"), ("node-d", "decode"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        by_role = {a.role: a for a in started}
        yield by_role["prefill"], by_role["decode"]
    finally:
        for agent in started:
            agent.stop()
