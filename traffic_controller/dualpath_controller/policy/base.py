"""Policy interface and the selection rules the policies share (paper §6, §A.4)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from dualpath_controller.policy.types import (
    Assignment,
    EngineScore,
    EngineState,
    NoCapacity,
    ReadPath,
    Request,
    Role,
)
from dualpath_controller.policy.view import ClusterView


@dataclass(frozen=True)
class ParamSpec:
    """One tunable policy parameter: default, bounds and what it means."""

    default: float
    minimum: float
    maximum: float
    help: str
    integer: bool = False


@dataclass
class BatchResult:
    """Outcome of `schedule_batch`: assignments in FIFO order (already applied to the view),
    and the requests left queued because the head of the queue found no capacity."""

    assignments: list[Assignment] = field(default_factory=list)
    unscheduled: list[Request] = field(default_factory=list)
    # Why the first unscheduled request could not be placed ("" when all were).
    blocked_reason: str = ""


class Policy(abc.ABC):
    """A scheduling policy. `schedule` is pure with respect to the view (it reads, never
    writes); the caller books the result with `view.apply(assignment, request)`."""

    name: ClassVar[str]
    description: ClassVar[str]
    PARAMS: ClassVar[Mapping[str, ParamSpec]]

    def __init__(self, params: Mapping[str, float]) -> None:
        # Validated and complete (defaults filled in) by the registry.
        self.params: dict[str, float] = dict(params)

    @abc.abstractmethod
    def schedule(self, view: ClusterView, request: Request) -> Assignment:
        """Pick (prefill engine, decode engine, read path) for one request. Raises NoCapacity."""

    def schedule_batch(self, view: ClusterView, requests: Sequence[Request]) -> BatchResult:
        """Schedule a FIFO queue: each decision is applied to the view before the next one.
        Stops at the first request that finds no capacity (head-of-line, like the paper's
        global FIFO queue); it and everything behind it come back unscheduled."""
        result = BatchResult()
        for i, request in enumerate(requests):
            try:
                assignment = self.schedule(view, request)
            except NoCapacity as exc:
                result.unscheduled = list(requests[i:])
                result.blocked_reason = str(exc)
                return result
            view.apply(assignment, request)
            result.assignments.append(assignment)
        return result

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}({params})"


# ----- shared rules -----


@dataclass(frozen=True)
class Pick:
    engine: EngineState
    rule: str
    value: float


def pick_prefill_paper(
    view: ClusterView, alpha: float, beta: float, request: Request | None = None
) -> Pick:
    """Paper's PE rule: engines with tok_e > beta are overloaded and get nothing; engines
    whose node read queue (tokens) is <= alpha are preferred; others only when no preferred
    engine is left; within a class the smallest tok_e wins (ties: smallest engine id).
    Only the request's prefill candidates are considered when it names some."""
    fallback: EngineState | None = None
    engines = view.engines
    nodes = view.nodes
    candidates = request.prefill_candidates if request is not None else frozenset()
    for tokens, engine_id in view.active_by_tokens(Role.PREFILL):
        if tokens > beta:
            break  # sorted by tokens: everything after is overloaded too
        if candidates and engine_id not in candidates:
            continue
        engine = engines[engine_id]
        if nodes[engine.node].read_queue_tokens <= alpha:
            return Pick(engine, "pe-preferred", tokens)
        if fallback is None:
            fallback = engine
    if fallback is not None:
        return Pick(fallback, "pe-read-queue-over-alpha", fallback.unfinished_tokens)
    raise NoCapacity(no_prefill_reason(view, beta, request))


def no_prefill_reason(view: ClusterView, beta: float, request: Request | None = None) -> str:
    total = view.count(Role.PREFILL)
    if total == 0:
        return "no prefill engines registered"
    if request is not None and request.prefill_candidates:
        return (
            f"none of the request's {len(request.prefill_candidates)} candidate prefill"
            f" engines is registered, active and under beta={beta:g}"
        )
    active = view.count(Role.PREFILL, active_only=True)
    if active == 0:
        return f"all {total} prefill engines are drained"
    return f"all {active} active prefill engines are overloaded (tok_e > beta={beta:g})"


def no_decode_reason(view: ClusterView, request: Request) -> str:
    total = view.count(Role.DECODE)
    if total == 0:
        return "no decode engines registered"
    active = view.count(Role.DECODE, active_only=True)
    if active == 0:
        return f"all {total} decode engines are drained"
    return f"no active decode engine has {request.hbm_tokens} tokens of free HBM"


def prefill_is_eligible(engine: EngineState, beta: float, request: Request | None = None) -> bool:
    return (
        not engine.drained
        and engine.unfinished_tokens <= beta
        and (request is None or request.may_prefill_on(engine.engine_id))
    )


def decode_is_eligible(engine: EngineState, request: Request) -> bool:
    return not engine.drained and engine.free_hbm_tokens >= request.hbm_tokens


def z_threshold(z: float, batch_tokens: int, group_tokens: int, group_size: int) -> float:
    """Z = z * (sum of len(r) over the batch + sum of tok_e over the group) / |E|."""
    return z * (batch_tokens + group_tokens) / group_size


def group_fits(view: ClusterView, group: str, request: Request) -> list[EngineState]:
    """Active engines of a decode group with room for the request."""
    engines = view.engines
    need = request.hbm_tokens
    out = []
    for engine_id in view.group_members(group):
        engine = engines[engine_id]
        if not engine.drained and engine.free_hbm_tokens >= need:
            out.append(engine)
    return out


def group_free_hbm(view: ClusterView, group: str) -> int:
    engines = view.engines
    return sum(
        engines[e].free_hbm_tokens for e in view.group_members(group) if not engines[e].drained
    )


def group_size(view: ClusterView, group: str) -> int:
    engines = view.engines
    return sum(1 for e in view.group_members(group) if not engines[e].drained)


def pick_decode_in_group(candidates: list[EngineState], request: Request, z_value: float) -> Pick:
    """Paper's in-group DE rule: among DEs with enough free HBM, prefer those with
    tok_e + len(r) <= Z, smallest seq_e first (then tok_e, id); otherwise the smallest tok_e
    (then seq_e, id)."""
    length = request.total_tokens
    under = [e for e in candidates if e.unfinished_tokens + length <= z_value]
    if under:
        best = min(under, key=lambda e: (e.unfinished_requests, e.unfinished_tokens, e.engine_id))
        return Pick(best, "de-under-z", best.unfinished_requests)
    best = min(candidates, key=lambda e: (e.unfinished_tokens, e.unfinished_requests, e.engine_id))
    return Pick(best, "de-min-tokens", best.unfinished_tokens)


@dataclass(frozen=True)
class DecodePick:
    pick: Pick
    group: str
    group_tokens: int
    z_value: float


def pick_decode_paper(view: ClusterView, request: Request, z: float) -> DecodePick:
    """Paper's DE rule for one request: the group with the smallest total tok_e (among groups
    with an active DE that fits the request; ties: group name), then the in-group Z rule
    with R = {request}."""
    for group_tokens, group in view.groups_by_tokens():
        candidates = group_fits(view, group, request)
        if not candidates:
            continue  # our reading: a group that cannot fit r is skipped, not a dead end
        z_value = z_threshold(z, request.total_tokens, group_tokens, group_size(view, group))
        return DecodePick(
            pick_decode_in_group(candidates, request, z_value), group, group_tokens, z_value
        )
    raise NoCapacity(no_decode_reason(view, request))


@dataclass(frozen=True)
class PathChoice:
    path: ReadPath
    de_fraction: float
    rule: str
    scores: tuple[EngineScore, ...]


def path_shorter_queue(
    view: ClusterView, pe: EngineState, de: EngineState, request: Request
) -> PathChoice:
    """Paper's path rule: read on the side whose node has the shorter storage read queue
    (tokens queued). Tie (including PE and DE on one node): PE_READ, the classic path, which
    needs no extra compute-network hop."""
    if request.cached_tokens == 0:
        return PathChoice(ReadPath.PE_READ, 0.0, "nothing-cached", ())
    pe_q = view.nodes[pe.node].read_queue_tokens
    de_q = view.nodes[de.node].read_queue_tokens
    scores = (
        EngineScore(pe.node, "pe-node-read-queue-tokens", pe_q),
        EngineScore(de.node, "de-node-read-queue-tokens", de_q),
    )
    if de_q < pe_q:
        return PathChoice(ReadPath.DE_READ, 1.0, "de-queue-shorter", scores)
    rule = "queues-equal-pe" if de_q == pe_q else "pe-queue-shorter"
    return PathChoice(ReadPath.PE_READ, 0.0, rule, scores)


def build_assignment(
    policy: str,
    request: Request,
    pe: Pick,
    de: Pick,
    path: PathChoice,
    extra_scores: tuple[EngineScore, ...] = (),
    detail: str = "",
) -> Assignment:
    reason = (
        f"PE {pe.engine.engine_id} ({pe.rule}, tok={pe.engine.unfinished_tokens}); "
        f"DE {de.engine.engine_id} ({de.rule}, tok={de.engine.unfinished_tokens}); "
        f"{path.path.value} ({path.rule}"
        + (f", de_fraction={path.de_fraction:.3f}" if path.path is ReadPath.SPLIT else "")
        + ")"
        + (f"; {detail}" if detail else "")
    )
    scores = (
        EngineScore(pe.engine.engine_id, pe.rule, pe.value),
        EngineScore(de.engine.engine_id, de.rule, de.value),
        *extra_scores,
        *path.scores,
    )
    return Assignment(
        request_id=request.request_id,
        prefill_engine_id=pe.engine.engine_id,
        decode_engine_id=de.engine.engine_id,
        read_path=path.path,
        de_read_fraction=path.de_fraction,
        policy=policy,
        reason=reason,
        scores=scores,
    )
