"""Client helpers for components that talk to the traffic controller (demo, agents, router,
bench).

- `ControllerClient` (unary.py): blocking calls with keyword arguments instead of messages;
  `schedule(..., wait_for_capacity_s=...)` retries RESOURCE_EXHAUSTED with backoff so a
  request is delayed, never dropped.
- `ControllerSession` (session.py): the same schedule / complete / cancel (same arguments,
  same errors: a drop-in for a frontend's `ControllerClient`), pipelined over Session
  streams, plus `*_async` variants returning futures. Thread-safe; for high-rate frontends
  (about half the controller's CPU per request of the unary calls, measured in
  bench/bench_controller.py).
- `AsyncControllerSession` (session_async.py): the same for asyncio frontends (coroutines,
  asyncio futures).
- `EngineReporter` (reporter.py): a thread that registers an engine and reports its load.

Shared pieces: the schedule arguments (requests.py), the retry policy (retry.py), the
blocking calls of both blocking clients (blocking.py), and the Session streams (errors.py,
stream.py, core.py).
"""

from dualpath_controller.client.core import RELEASE_LINGER_S, SessionConfig
from dualpath_controller.client.errors import SessionOperationError
from dualpath_controller.client.reporter import EngineDown, EngineReporter
from dualpath_controller.client.requests import EngineLoad, ScheduleArgs, ScheduleCall
from dualpath_controller.client.retry import RETRYABLE, finish_or_missing, retry_while_busy
from dualpath_controller.client.session import ControllerSession
from dualpath_controller.client.session_async import AsyncControllerSession
from dualpath_controller.client.unary import ControllerClient

__all__ = [
    "RELEASE_LINGER_S",
    "RETRYABLE",
    "AsyncControllerSession",
    "ControllerClient",
    "ControllerSession",
    "EngineDown",
    "EngineLoad",
    "EngineReporter",
    "ScheduleArgs",
    "ScheduleCall",
    "SessionConfig",
    "SessionOperationError",
    "finish_or_missing",
    "retry_while_busy",
]
