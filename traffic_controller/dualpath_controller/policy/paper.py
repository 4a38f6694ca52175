"""`paper`: the DualPath paper's inter-engine scheduler (§6, §A.4), and `prefill-only`, the
same engine choice with every read on the prefill side (the baseline)."""

from __future__ import annotations

from collections.abc import Sequence

from dualpath_controller.policy.base import (
    BatchResult,
    ParamSpec,
    PathChoice,
    Policy,
    build_assignment,
    group_fits,
    group_free_hbm,
    group_size,
    no_decode_reason,
    path_shorter_queue,
    pick_decode_in_group,
    pick_decode_paper,
    pick_prefill_paper,
    z_threshold,
)
from dualpath_controller.policy.types import (
    Assignment,
    EngineScore,
    EngineState,
    NoCapacity,
    ReadPath,
    Request,
)
from dualpath_controller.policy.view import ClusterView

# Defaults (inferred; the paper gives the definitions, not the numbers):
# alpha = tokens one node's SNIC reads in 3 s: 50 GB/s * 3 s / 40,016 B per token (DS 660B).
DEFAULT_ALPHA_TOKENS = 3_748_500
# beta = tokens one GPU processes in 5 s; with ~98% cache hits a prefill engine moves ~200K
# prompt tokens/s (cached + computed), so 5 s ~ 1M tokens.
DEFAULT_BETA_TOKENS = 1_000_000

ALPHA = ParamSpec(
    DEFAULT_ALPHA_TOKENS,
    0,
    1e12,
    "PE preference threshold on the node's read queue, in tokens (paper: readable in 3 s)",
    integer=True,
)
BETA = ParamSpec(
    DEFAULT_BETA_TOKENS,
    1,
    1e12,
    "overload threshold on an engine's unfinished tokens (paper: processable in 5 s)",
    integer=True,
)
Z = ParamSpec(1.05, 1.0, 10.0, "slack factor of the decode-group Z rule (paper: 1.05)")


def alpha_for(snic_read_bytes_per_s: float, kv_bytes_per_token: int, seconds: float = 3.0) -> int:
    """alpha as the paper defines it: tokens one node's storage NIC reads in `seconds`."""
    return int(snic_read_bytes_per_s * seconds / kv_bytes_per_token)


def beta_for(engine_tokens_per_s: float, seconds: float = 5.0) -> int:
    """beta as the paper defines it: tokens one GPU processes in `seconds`."""
    return int(engine_tokens_per_s * seconds)


class PaperPolicy(Policy):
    name = "paper"
    description = (
        "the paper's scheduler: PE alpha/beta classes, DE group + Z rule, shorter read queue"
    )
    PARAMS = {"alpha": ALPHA, "beta": BETA, "z": Z}

    def choose_path(
        self, view: ClusterView, pe: EngineState, de: EngineState, request: Request
    ) -> PathChoice:
        return path_shorter_queue(view, pe, de, request)

    def schedule(self, view: ClusterView, request: Request) -> Assignment:
        pe = pick_prefill_paper(view, self.params["alpha"], self.params["beta"], request)
        de = pick_decode_paper(view, request, self.params["z"])
        path = self.choose_path(view, pe.engine, de.pick.engine, request)
        extra = (
            EngineScore(de.group, "de-group-tokens", de.group_tokens),
            EngineScore(de.group, "z-threshold", de.z_value),
        )
        return build_assignment(self.name, request, pe, de.pick, path, extra)

    def schedule_batch(self, view: ClusterView, requests: Sequence[Request]) -> BatchResult:
        """The paper's batch form of the DE rule. Repeatedly: take the decode group with the
        smallest total tok_e that can fit the queue head; R = the longest FIFO prefix of the
        queue whose HBM need fits the group's free HBM; Z = z * (sum len(r) over R + sum
        tok_e over the group) / |E|; place each r of R (PE rule, then the in-group rule
        against that one Z), booking each before the next. Stops when the head finds no PE or
        no DE with HBM left. For one request this equals `schedule` followed by `apply`, so
        a batch of one takes that shorter way (most batches a server sees)."""
        result = BatchResult()
        if len(requests) == 1:
            try:
                assignment = self.schedule(view, requests[0])
            except NoCapacity as exc:
                return _blocked(result, list(requests), 0, str(exc))
            view.apply(assignment, requests[0])
            result.assignments.append(assignment)
            return result
        queue = list(requests)
        i = 0
        z = self.params["z"]
        while i < len(queue):
            head = queue[i]
            found = next(
                ((t, g) for t, g in view.groups_by_tokens() if group_fits(view, g, head)), None
            )
            if found is None:
                return _blocked(result, queue, i, no_decode_reason(view, head))
            group_tokens, group = found
            batch = _fifo_prefix_fitting(queue, i, group_free_hbm(view, group))
            z_value = z_threshold(
                z, sum(r.total_tokens for r in batch), group_tokens, group_size(view, group)
            )
            for request in batch:
                try:
                    pe = pick_prefill_paper(
                        view, self.params["alpha"], self.params["beta"], request
                    )
                except NoCapacity as exc:
                    return _blocked(result, queue, i, str(exc))
                candidates = group_fits(view, group, request)
                if not candidates:
                    break  # HBM fragmented inside the group: pick a group again
                de = pick_decode_in_group(candidates, request, z_value)
                path = self.choose_path(view, pe.engine, de.engine, request)
                extra = (
                    EngineScore(group, "de-group-tokens", group_tokens),
                    EngineScore(group, "z-threshold", z_value),
                )
                assignment = build_assignment(self.name, request, pe, de, path, extra)
                view.apply(assignment, request)
                result.assignments.append(assignment)
                i += 1
        return result


def _fifo_prefix_fitting(queue: list[Request], start: int, free_hbm: int) -> list[Request]:
    batch: list[Request] = []
    used = 0
    for request in queue[start:]:
        used += request.hbm_tokens
        if used > free_hbm:
            break
        batch.append(request)
    return batch


def _blocked(result: BatchResult, queue: list[Request], i: int, reason: str) -> BatchResult:
    result.unscheduled = queue[i:]
    result.blocked_reason = reason
    return result


class PrefillOnlyPolicy(PaperPolicy):
    """The baseline: the paper's engine choice, but every read goes through the prefill
    node's storage NIC (what PD-disaggregated serving does without DualPath)."""

    name = "prefill-only"
    description = "baseline: paper's engine choice, all KV read on the prefill side"

    def choose_path(
        self, view: ClusterView, pe: EngineState, de: EngineState, request: Request
    ) -> PathChoice:
        return PathChoice(ReadPath.PE_READ, 0.0, "prefill-only", ())
