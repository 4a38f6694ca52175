"""Translation between the gRPC messages (dualpath.v1) and the policy core's values."""

from __future__ import annotations

from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.policy import Assignment, LoadReport, ReadPath, Request, Role

ROLE_TO_PROTO = {Role.PREFILL: pb.ENGINE_ROLE_PREFILL, Role.DECODE: pb.ENGINE_ROLE_DECODE}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}
PATH_TO_PROTO = {
    ReadPath.PE_READ: pb.READ_PATH_PE_READ,
    ReadPath.DE_READ: pb.READ_PATH_DE_READ,
    ReadPath.SPLIT: pb.READ_PATH_SPLIT,
}
PATH_FROM_PROTO = {v: k for k, v in PATH_TO_PROTO.items()}


def role_from_proto(value: int) -> Role:
    role = ROLE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if role is None:
        raise ValueError(
            f"engine.role must be ENGINE_ROLE_PREFILL or ENGINE_ROLE_DECODE, got {value}"
        )
    return role


def parse_role(text: str | Role) -> Role:
    """'prefill' / 'decode' (or a Role) -> Role."""
    if isinstance(text, Role):
        return text
    try:
        return Role(text.lower())
    except ValueError:
        raise ValueError(f"role must be 'prefill' or 'decode', got {text!r}") from None


def request_from_proto(message: pb.ScheduleRequest) -> Request:
    """Raises ValueError naming the bad field (the server answers INVALID_ARGUMENT)."""
    return Request(
        request_id=message.request_id,
        total_tokens=message.total_tokens,
        cached_tokens=message.cached_tokens,
        append_tokens=message.append_tokens,
        expected_output_tokens=message.expected_output_tokens,
        kv_bytes_per_token=message.kv_bytes_per_token,
        prefill_candidates=frozenset(message.prefill_candidates),
    )


def assignment_to_proto(a: Assignment, into: pb.Assignment | None = None) -> pb.Assignment:
    """Core fields only; the server adds nodes, agent endpoints and byte counts. Fills `into`
    in place when given (about half the cost of building a message and copying it)."""
    out = pb.Assignment() if into is None else into
    out.request_id = a.request_id
    out.prefill_engine_id = a.prefill_engine_id
    out.decode_engine_id = a.decode_engine_id
    out.read_path = PATH_TO_PROTO[a.read_path]
    out.de_read_fraction = a.de_read_fraction
    out.policy = a.policy
    out.reason = a.reason
    add_score = out.scores.add
    for s in a.scores:
        add_score(engine_id=s.engine_id, rule=s.rule, value=s.value)
    return out


def load_report_from_proto(report: pb.LoadReport, role: int) -> LoadReport:
    """A checked report (the state validated it); free HBM only counts for decode engines."""
    return LoadReport(
        report.engine_id,
        report.unfinished_requests,
        report.unfinished_tokens,
        report.free_hbm_tokens if role == pb.ENGINE_ROLE_DECODE else None,
        report.read_queue_length,
        report.read_queue_tokens,
        report.read_queue_bytes,
        report.snic_inflight_bytes,
    )
