"""The traffic controller's policy core: pure, deterministic scheduling decisions.

No I/O, no clock, no randomness: the same view and the same calls give the same
assignments, so the gRPC server and the simulator (sim/) run exactly this code.

The booking lifecycle (batch decision, read done, prefill done, release) that both the
server (`state.py`) and the simulator run is `Lifecycle` (lifecycle.py); use it rather than
the calls below unless you need a single step. What it does underneath:

    from dualpath_controller.policy import (
        ClusterView, EngineState, NoCapacity, Request, Role, get_policy,
    )

    view = ClusterView()
    # 1. Register engines (nodes are created on first use). DEs need free HBM to get work.
    view.add_engine(EngineState("p0", Role.PREFILL, node="n0"))
    view.add_engine(EngineState("d0", Role.DECODE, node="n1", group="n1",
                                hbm_capacity_tokens=500_000, free_hbm_tokens=500_000))
    view.update_node_load("n0", snic_read_bytes_per_s=50e9)   # optional, for dualpath-split

    # 2. Pick a policy by name; parameters are validated (ValueError names the bad one).
    policy = get_policy("paper", alpha=3_748_500, beta=1_000_000, z=1.05)

    # 3. Per request: decide, then book. `schedule` only reads the view; `apply` adds the
    #    load (both engines: seq_e+1, tok_e+len(r); DE free HBM -= prompt+expected output;
    #    each side's node read queue += its share of cached tokens/bytes), so the next
    #    decision sees it, as the paper updates tok_e after each assignment.
    request = Request("r1", total_tokens=32_000, cached_tokens=31_500, append_tokens=500,
                      expected_output_tokens=200, kv_bytes_per_token=40_016)
    try:
        assignment = policy.schedule(view, request)
    except NoCapacity as why:
        ...  # keep it queued and retry after loads change
    else:
        view.apply(assignment, request)

    #    Or a whole FIFO queue at once (the paper's batch form of the DE Z rule, where R is
    #    the queued set that fits the group's HBM). It applies each decision itself; do not
    #    apply again. Requests left over (head found no capacity) come back in order:
    result = policy.schedule_batch(view, queued_requests)
    # result.assignments, result.unscheduled, result.blocked_reason

    # 4. As the request progresses, give its load back (each step is idempotent):
    view.finish_read(request.request_id)     # its KV read finished: leaves the read queues
    view.finish_prefill(request.request_id)  # prefill done: PE no longer carries it
    view.release(request.request_id)         # completed/cancelled: everything left (DE too)

    # Optional: real engines' reports overwrite the booked numbers.
    view.update_engine_load("d0", unfinished_requests=3, unfinished_tokens=90_000,
                            free_hbm_tokens=410_000)
    view.update_node_load("n0", read_queue_length=2, read_queue_tokens=60_000,
                          read_queue_bytes=2_400_960_000)
    view.set_drained("p0", True)   # no new work (missed reports); False to bring it back

Assignments say `read_path` (PE_READ / DE_READ / SPLIT) and `de_read_fraction` (share of the
cached bytes read on the decode side; the prefill side reads `pe_read_fraction`).
Mutate engines and nodes only through the view's methods: it keeps sorted indexes (that is
what makes a decision over 1,152 engines take microseconds).

Policies (`policy_names()`): paper, prefill-only, round-robin, dualpath-split. Parameters
and their bounds: `describe_policies()`. `round-robin` keeps a cursor, so use one policy
instance per view.
"""

from dualpath_controller.policy.base import BatchResult, ParamSpec, Policy
from dualpath_controller.policy.lifecycle import (
    Lifecycle,
    LifecycleEvent,
    LoadReport,
    PrefillDone,
    ReadDone,
    Release,
    ScheduleBatch,
)
from dualpath_controller.policy.paper import (
    DEFAULT_ALPHA_TOKENS,
    DEFAULT_BETA_TOKENS,
    alpha_for,
    beta_for,
)
from dualpath_controller.policy.registry import (
    POLICIES,
    describe_policies,
    get_policy,
    parse_policy_params,
    policy_names,
)
from dualpath_controller.policy.split import balanced_de_fraction
from dualpath_controller.policy.types import (
    MAX_REQUEST_TOKENS,
    Assignment,
    EngineScore,
    EngineState,
    NoCapacity,
    NodeState,
    ReadPath,
    Request,
    Role,
)
from dualpath_controller.policy.view import Booking, ClusterView

__all__ = [
    "DEFAULT_ALPHA_TOKENS",
    "DEFAULT_BETA_TOKENS",
    "MAX_REQUEST_TOKENS",
    "POLICIES",
    "Assignment",
    "BatchResult",
    "Booking",
    "ClusterView",
    "EngineScore",
    "EngineState",
    "Lifecycle",
    "LifecycleEvent",
    "LoadReport",
    "NoCapacity",
    "NodeState",
    "ParamSpec",
    "Policy",
    "PrefillDone",
    "ReadDone",
    "ReadPath",
    "Release",
    "Request",
    "Role",
    "ScheduleBatch",
    "alpha_for",
    "balanced_de_fraction",
    "beta_for",
    "describe_policies",
    "get_policy",
    "parse_policy_params",
    "policy_names",
]
