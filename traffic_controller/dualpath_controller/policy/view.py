"""ClusterView: the controller's picture of the cluster, plus the indexes policies need.

Pure state: no I/O, no clock. All mutation goes through methods so the indexes stay right:
- active (non-drained) engines of each role sorted by (unfinished_tokens, engine_id), so the
  paper's "smallest tok_e" is the first eligible entry instead of a scan of 1,152 engines;
- decode groups sorted by the total tok_e of their active engines.

Load accounting: a load report overwrites an engine's (or node's) numbers; `apply` adds a
decision's load on top (the paper updates tok_e after each assignment) and `release`
subtracts it again, clamped at zero. A report is assumed to include every request the engine
had received when it was taken, so bookings are not re-added after a report.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from dualpath_controller.policy.types import (
    Assignment,
    EngineState,
    NodeState,
    Request,
    Role,
)


@dataclass(slots=True)
class Booking:
    """The load one assignment added to the view, so it can be taken back exactly once.

    Plain values only (no Request / Assignment objects): a server keeps thousands of these
    alive, and every object they hold is one more for each cyclic-GC pass to traverse."""

    request_id: str
    prefill_engine_id: str
    decode_engine_id: str
    # len(r): what each engine's tok_e grew by.
    total_tokens: int
    # Prompt + expected output: what the decode engine's free HBM shrank by.
    hbm_tokens: int
    pe_node: str
    de_node: str
    pe_read_tokens: int
    pe_read_bytes: int
    de_read_tokens: int
    de_read_bytes: int
    prefill_open: bool = True
    decode_open: bool = True
    reads_open: bool = True


def _split_read(request: Request, de_fraction: float) -> tuple[int, int, int, int]:
    """(pe_tokens, pe_bytes, de_tokens, de_bytes) of a request's cached read."""
    de_tokens = round(request.cached_tokens * de_fraction)
    de_bytes = round(request.cached_bytes * de_fraction)
    return (
        request.cached_tokens - de_tokens,
        request.cached_bytes - de_bytes,
        de_tokens,
        de_bytes,
    )


class ClusterView:
    def __init__(self) -> None:
        # Read-only for callers: change them through the methods below.
        self.engines: dict[str, EngineState] = {}
        self.nodes: dict[str, NodeState] = {}
        self.bookings: dict[str, Booking] = {}
        # Bumped on every change; lets callers cache derived values.
        self.version = 0
        self._by_tokens: dict[Role, list[tuple[int, str]]] = {Role.PREFILL: [], Role.DECODE: []}
        self._ids: dict[Role, list[str]] = {Role.PREFILL: [], Role.DECODE: []}
        # Decode groups: all members (sorted ids), and totals over active members.
        self._group_members: dict[str, list[str]] = {}
        self._group_tokens: dict[str, int] = {}
        self._group_active: dict[str, int] = {}
        self._groups_by_tokens: list[tuple[int, str]] = []
        # Nodes hosting an active engine of each role; rebuilt lazily after the engine set
        # (or a drain flag) changes, which is rare next to decisions.
        self._role_nodes: dict[Role, tuple[str, ...]] | None = None

    # ----- queries (policies use these) -----

    def active_by_tokens(self, role: Role) -> Sequence[tuple[int, str]]:
        """(unfinished_tokens, engine_id) of non-drained engines, smallest first."""
        return self._by_tokens[role]

    def engine_ids(self, role: Role) -> Sequence[str]:
        """All engine ids of a role (drained included), sorted."""
        return self._ids[role]

    def groups_by_tokens(self) -> Sequence[tuple[int, str]]:
        """(total tok_e of active members, group) of decode groups with an active engine."""
        return self._groups_by_tokens

    def group_members(self, group: str) -> Sequence[str]:
        """Decode engine ids of a group (drained included), sorted."""
        return self._group_members.get(group, ())

    def count(self, role: Role, *, active_only: bool = False) -> int:
        if active_only:
            return len(self._by_tokens[role])
        return len(self._ids[role])

    def role_nodes(self, role: Role) -> Sequence[str]:
        """Sorted ids of the nodes hosting at least one active engine of `role`."""
        if self._role_nodes is None:
            found: dict[Role, set[str]] = {Role.PREFILL: set(), Role.DECODE: set()}
            for engine in self.engines.values():
                if not engine.drained:
                    found[engine.role].add(engine.node)
            self._role_nodes = {r: tuple(sorted(nodes)) for r, nodes in found.items()}
        return self._role_nodes[role]

    # ----- registration -----

    def add_engine(self, engine: EngineState) -> None:
        """Register an engine (replacing one with the same id); creates its node if new."""
        if not engine.engine_id:
            raise ValueError("engine_id must be a non-empty string")
        if not engine.node:
            raise ValueError(f"engine {engine.engine_id}: node must be a non-empty string")
        if not isinstance(engine.role, Role):
            raise ValueError(f"engine {engine.engine_id}: role must be a Role")
        for name in ("hbm_capacity_tokens", "unfinished_requests", "unfinished_tokens"):
            if getattr(engine, name) < 0:
                raise ValueError(f"engine {engine.engine_id}: {name} must be >= 0")
        if engine.free_hbm_tokens < 0:
            raise ValueError(f"engine {engine.engine_id}: free_hbm_tokens must be >= 0")
        if engine.engine_id in self.engines:
            self.remove_engine(engine.engine_id)
        self.engines[engine.engine_id] = engine
        self.nodes.setdefault(engine.node, NodeState(engine.node))
        bisect.insort(self._ids[engine.role], engine.engine_id)
        if engine.role is Role.DECODE:
            bisect.insort(self._group_members.setdefault(engine.group, []), engine.engine_id)
        if not engine.drained:
            self._activate(engine)
        self._role_nodes = None
        self.version += 1

    def remove_engine(self, engine_id: str) -> EngineState:
        """Forget an engine. Bookings that name it release nothing on its side."""
        engine = self.engines[engine_id]
        if not engine.drained:
            self._deactivate(engine)
        ids = self._ids[engine.role]
        del ids[bisect.bisect_left(ids, engine_id)]
        if engine.role is Role.DECODE:
            members = self._group_members[engine.group]
            del members[bisect.bisect_left(members, engine_id)]
            if not members:
                del self._group_members[engine.group]
        del self.engines[engine_id]
        self._role_nodes = None
        self.version += 1
        return engine

    def set_drained(self, engine_id: str, drained: bool) -> None:
        engine = self.engines[engine_id]
        if engine.drained == drained:
            return
        if drained:
            self._deactivate(engine)
            engine.drained = True
        else:
            engine.drained = False
            self._activate(engine)
        self._role_nodes = None
        self.version += 1

    # ----- load reports -----

    def update_engine_load(
        self,
        engine_id: str,
        *,
        unfinished_requests: int | None = None,
        unfinished_tokens: int | None = None,
        free_hbm_tokens: int | None = None,
    ) -> None:
        """Overwrite an engine's load with reported numbers (None = keep)."""
        engine = self.engines[engine_id]
        if unfinished_requests is not None:
            engine.unfinished_requests = max(0, unfinished_requests)
        if free_hbm_tokens is not None:
            engine.free_hbm_tokens = max(0, free_hbm_tokens)
        if unfinished_tokens is not None:
            self._set_tokens(engine, max(0, unfinished_tokens))
        self.version += 1

    def update_node_load(
        self,
        node: str,
        *,
        read_queue_length: int | None = None,
        read_queue_tokens: int | None = None,
        read_queue_bytes: int | None = None,
        snic_inflight_bytes: int | None = None,
        snic_read_bytes_per_s: float | None = None,
    ) -> None:
        """Overwrite a node's read-queue numbers (None = keep); creates the node if new."""
        state = self.nodes.get(node)
        if state is None:
            state = self.nodes[node] = NodeState(node)
        if read_queue_length is not None:
            state.read_queue_length = max(0, read_queue_length)
        if read_queue_tokens is not None:
            state.read_queue_tokens = max(0, read_queue_tokens)
        if read_queue_bytes is not None:
            state.read_queue_bytes = max(0, read_queue_bytes)
        if snic_inflight_bytes is not None:
            state.snic_inflight_bytes = max(0, snic_inflight_bytes)
        if snic_read_bytes_per_s is not None:
            state.snic_read_bytes_per_s = max(0.0, float(snic_read_bytes_per_s))
        self.version += 1

    # ----- bookings -----

    def apply(self, assignment: Assignment, request: Request) -> Booking:
        """Book a decision's load: both engines get the request (seq_e + 1, tok_e + len(r)),
        the decode engine's free HBM shrinks by prompt + expected output, and each side's
        node read queue grows by the share of cached tokens/bytes it reads."""
        if assignment.request_id != request.request_id:
            raise ValueError(
                f"assignment is for {assignment.request_id!r}, request is {request.request_id!r}"
            )
        if request.request_id in self.bookings:
            raise ValueError(f"request {request.request_id!r} is already booked")
        pe = self.engines[assignment.prefill_engine_id]
        de = self.engines[assignment.decode_engine_id]
        if pe.role is not Role.PREFILL or de.role is not Role.DECODE:
            raise ValueError("assignment must name a prefill engine and a decode engine")
        pe_tok, pe_bytes, de_tok, de_bytes = _split_read(request, assignment.de_read_fraction)
        booking = Booking(
            request.request_id,
            pe.engine_id,
            de.engine_id,
            request.total_tokens,
            request.hbm_tokens,
            pe.node,
            de.node,
            pe_tok,
            pe_bytes,
            de_tok,
            de_bytes,
        )
        for engine in (pe, de):
            engine.unfinished_requests += 1
            self._set_tokens(engine, engine.unfinished_tokens + request.total_tokens)
        de.free_hbm_tokens = max(0, de.free_hbm_tokens - request.hbm_tokens)
        self._book_reads(booking, +1)
        self.bookings[request.request_id] = booking
        self.version += 1
        return booking

    def finish_read(self, request_id: str) -> None:
        """The request's KV read is done: its bytes leave both nodes' read queues."""
        booking = self.bookings[request_id]
        if booking.reads_open:
            self._book_reads(booking, -1)
            booking.reads_open = False
            self.version += 1

    def finish_prefill(self, request_id: str) -> None:
        """Prefill is done: the prefill engine no longer carries the request (nor its read)."""
        booking = self.bookings[request_id]
        self.finish_read(request_id)
        if booking.prefill_open:
            self._unbook_engine(booking.prefill_engine_id, booking, hbm=False)
            booking.prefill_open = False
            self.version += 1

    def release(self, request_id: str) -> Booking:
        """The request completed or was cancelled: take back whatever is still booked."""
        booking = self.bookings[request_id]
        self.finish_prefill(request_id)
        if booking.decode_open:
            self._unbook_engine(booking.decode_engine_id, booking, hbm=True)
            booking.decode_open = False
        del self.bookings[request_id]
        self.version += 1
        return booking

    # ----- internals -----

    def _book_reads(self, booking: Booking, sign: int) -> None:
        for node_id, tokens, nbytes in (
            (booking.pe_node, booking.pe_read_tokens, booking.pe_read_bytes),
            (booking.de_node, booking.de_read_tokens, booking.de_read_bytes),
        ):
            node = self.nodes.get(node_id)
            if node is None or (tokens == 0 and nbytes == 0):
                continue
            node.read_queue_length = max(0, node.read_queue_length + sign)
            node.read_queue_tokens = max(0, node.read_queue_tokens + sign * tokens)
            node.read_queue_bytes = max(0, node.read_queue_bytes + sign * nbytes)

    def _unbook_engine(self, engine_id: str, booking: Booking, *, hbm: bool) -> None:
        engine = self.engines.get(engine_id)
        if engine is None:
            return  # deregistered since: nothing to give back
        engine.unfinished_requests = max(0, engine.unfinished_requests - 1)
        self._set_tokens(engine, max(0, engine.unfinished_tokens - booking.total_tokens))
        if hbm:
            free = engine.free_hbm_tokens + booking.hbm_tokens
            if engine.hbm_capacity_tokens > 0:
                free = min(free, engine.hbm_capacity_tokens)
            engine.free_hbm_tokens = free

    def _set_tokens(self, engine: EngineState, tokens: int) -> None:
        old = engine.unfinished_tokens
        if old == tokens:
            return
        if not engine.drained:
            ranked = self._by_tokens[engine.role]
            del ranked[bisect.bisect_left(ranked, (old, engine.engine_id))]
            bisect.insort(ranked, (tokens, engine.engine_id))
            if engine.role is Role.DECODE:
                self._move_group(engine.group, tokens - old, 0)
        engine.unfinished_tokens = tokens

    def _activate(self, engine: EngineState) -> None:
        bisect.insort(self._by_tokens[engine.role], (engine.unfinished_tokens, engine.engine_id))
        if engine.role is Role.DECODE:
            self._move_group(engine.group, engine.unfinished_tokens, +1)

    def _deactivate(self, engine: EngineState) -> None:
        ranked = self._by_tokens[engine.role]
        del ranked[bisect.bisect_left(ranked, (engine.unfinished_tokens, engine.engine_id))]
        if engine.role is Role.DECODE:
            self._move_group(engine.group, -engine.unfinished_tokens, -1)

    def _move_group(self, group: str, token_delta: int, active_delta: int) -> None:
        old_total = self._group_tokens.get(group, 0)
        old_active = self._group_active.get(group, 0)
        if old_active > 0:
            ranked = self._groups_by_tokens
            del ranked[bisect.bisect_left(ranked, (old_total, group))]
        total = old_total + token_delta
        active = old_active + active_delta
        if active > 0:
            self._group_tokens[group] = total
            self._group_active[group] = active
            bisect.insort(self._groups_by_tokens, (total, group))
        else:
            self._group_tokens.pop(group, None)
            self._group_active.pop(group, None)

    def check_invariants(self) -> None:
        """Recompute every index from scratch and compare (for tests)."""
        for role in Role:
            want = sorted(
                (e.unfinished_tokens, e.engine_id)
                for e in self.engines.values()
                if e.role is role and not e.drained
            )
            assert self._by_tokens[role] == want, f"{role} token index out of date"
            ids = sorted(e.engine_id for e in self.engines.values() if e.role is role)
            assert list(self._ids[role]) == ids, f"{role} id index out of date"
        totals: dict[str, int] = {}
        for e in self.engines.values():
            if e.role is Role.DECODE and not e.drained:
                totals[e.group] = totals.get(e.group, 0) + e.unfinished_tokens
        assert self._groups_by_tokens == sorted((t, g) for g, t in totals.items()), (
            "group index out of date"
        )
