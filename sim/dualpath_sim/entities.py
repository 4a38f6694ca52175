"""The simulator's moving parts: agents, their turns (one request each) and the engines'
own state (a prefill engine's ready queue and batch; a decode engine's continuous batch).
Plain slotted classes: millions of events touch them, so no dataclass machinery."""

from __future__ import annotations

from collections import deque

from dualpath_controller.policy import Request

from dualpath_sim.hardware import Link, Node
from dualpath_sim.trace import Trajectory


class AgentState:
    __slots__ = ("aid", "done_at", "end_turn", "next_turn", "stored", "traj")

    def __init__(self, aid: int, traj: Trajectory, first_turn: int, end_turn: int) -> None:
        self.aid = aid
        self.traj = traj
        self.next_turn = first_turn
        self.end_turn = end_turn
        # Tokens of the agent's current context persisted as Full Blocks in storage. A window
        # that starts mid-trajectory finds its earlier turns already stored.
        self.stored = traj.reused_prefix_tokens[first_turn] if first_turn > 0 else 0
        self.done_at = -1.0


class TurnState:
    __slots__ = (
        "agent",
        "arrival",
        "cached",
        "ctx_join",
        "de",
        "de_bytes",
        "done_tokens",
        "first_token",
        "join",
        "loaded",
        "new",
        "out",
        "pe",
        "pe_bytes",
        "prompt",
        "request",
        "tau_join",
        "v_join",
    )
    pe: PrefillEngine
    de: DecodeEngine

    def __init__(self, agent: AgentState, arrival: float, request: Request, out: int) -> None:
        self.agent = agent
        self.arrival = arrival
        self.request = request
        self.prompt = request.total_tokens
        self.cached = request.cached_tokens
        self.new = request.append_tokens
        self.out = out
        self.done_tokens = 0
        self.loaded = False
        self.pe_bytes = 0
        self.de_bytes = 0
        self.first_token = -1.0
        self.join = -1.0
        self.tau_join = 0.0
        self.v_join = 0.0
        self.ctx_join = 0


class PrefillEngine:
    __slots__ = ("batch", "busy", "cnic", "eid", "node", "ready")

    def __init__(self, eid: str, node: Node, cnic: Link) -> None:
        self.eid = eid
        self.node = node
        self.cnic = cnic
        self.ready: deque[TurnState] = deque()
        self.busy = False
        self.batch: list[tuple[TurnState, int]] = []


class DecodeEngine:
    __slots__ = (
        "capacity",
        "cnic",
        "ctx_sum",
        "eid",
        "heap",
        "index",
        "n",
        "node",
        "seq",
        "t_u",
        "t_used",
        "tau",
        "used",
        "v",
        "v_sum",
        "version",
    )

    def __init__(self, eid: str, node: Node, cnic: Link, capacity: int) -> None:
        self.eid = eid
        self.node = node
        self.cnic = cnic
        self.capacity = capacity
        self.used = 0  # HBM tokens booked
        self.heap: list[tuple[float, int, TurnState]] = []
        self.n = 0
        self.v = 0.0  # decode steps done since the start (continuous)
        self.t_u = 0.0
        self.tau = 0.0
        self.ctx_sum = 0  # sum of context tokens at join
        self.v_sum = 0.0  # sum of v at join
        self.version = 0
        self.seq = 0
        self.t_used = 0.0
        self.index = 0
