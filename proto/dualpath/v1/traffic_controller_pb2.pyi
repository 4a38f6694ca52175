from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EngineRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_ROLE_UNSPECIFIED: _ClassVar[EngineRole]
    ENGINE_ROLE_PREFILL: _ClassVar[EngineRole]
    ENGINE_ROLE_DECODE: _ClassVar[EngineRole]

class ReadPath(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_PATH_UNSPECIFIED: _ClassVar[ReadPath]
    READ_PATH_PE_READ: _ClassVar[ReadPath]
    READ_PATH_DE_READ: _ClassVar[ReadPath]
    READ_PATH_SPLIT: _ClassVar[ReadPath]
ENGINE_ROLE_UNSPECIFIED: EngineRole
ENGINE_ROLE_PREFILL: EngineRole
ENGINE_ROLE_DECODE: EngineRole
READ_PATH_UNSPECIFIED: ReadPath
READ_PATH_PE_READ: ReadPath
READ_PATH_DE_READ: ReadPath
READ_PATH_SPLIT: ReadPath

class Engine(_message.Message):
    __slots__ = ("engine_id", "role", "node", "group", "hbm_capacity_tokens", "agent_endpoint", "snic_read_bytes_per_s")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    HBM_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SNIC_READ_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    role: EngineRole
    node: str
    group: str
    hbm_capacity_tokens: int
    agent_endpoint: str
    snic_read_bytes_per_s: float
    def __init__(self, engine_id: _Optional[str] = ..., role: _Optional[_Union[EngineRole, str]] = ..., node: _Optional[str] = ..., group: _Optional[str] = ..., hbm_capacity_tokens: _Optional[int] = ..., agent_endpoint: _Optional[str] = ..., snic_read_bytes_per_s: _Optional[float] = ...) -> None: ...

class RegisterEngineRequest(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: Engine
    def __init__(self, engine: _Optional[_Union[Engine, _Mapping]] = ...) -> None: ...

class RegisterEngineResponse(_message.Message):
    __slots__ = ("report_interval_ms", "liveness_timeout_ms")
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    report_interval_ms: int
    liveness_timeout_ms: int
    def __init__(self, report_interval_ms: _Optional[int] = ..., liveness_timeout_ms: _Optional[int] = ...) -> None: ...

class DeregisterEngineRequest(_message.Message):
    __slots__ = ("engine_id",)
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    def __init__(self, engine_id: _Optional[str] = ...) -> None: ...

class DeregisterEngineResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("engine_id", "report_seq", "unfinished_requests", "unfinished_tokens", "read_queue_length", "read_queue_bytes", "free_hbm_tokens", "snic_inflight_bytes", "read_queue_tokens")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_HBM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SNIC_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    report_seq: int
    unfinished_requests: int
    unfinished_tokens: int
    read_queue_length: int
    read_queue_bytes: int
    free_hbm_tokens: int
    snic_inflight_bytes: int
    read_queue_tokens: int
    def __init__(self, engine_id: _Optional[str] = ..., report_seq: _Optional[int] = ..., unfinished_requests: _Optional[int] = ..., unfinished_tokens: _Optional[int] = ..., read_queue_length: _Optional[int] = ..., read_queue_bytes: _Optional[int] = ..., free_hbm_tokens: _Optional[int] = ..., snic_inflight_bytes: _Optional[int] = ..., read_queue_tokens: _Optional[int] = ...) -> None: ...

class AgentFailureReport(_message.Message):
    __slots__ = ("agent_endpoint", "reason")
    AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_endpoint: str
    reason: str
    def __init__(self, agent_endpoint: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AgentFailureResponse(_message.Message):
    __slots__ = ("drained_engine_ids",)
    DRAINED_ENGINE_IDS_FIELD_NUMBER: _ClassVar[int]
    drained_engine_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, drained_engine_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("request_id", "total_tokens", "cached_tokens", "append_tokens", "expected_output_tokens", "kv_bytes_per_token", "session_id", "prefill_candidates")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    APPEND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    total_tokens: int
    cached_tokens: int
    append_tokens: int
    expected_output_tokens: int
    kv_bytes_per_token: int
    session_id: str
    prefill_candidates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., total_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., append_tokens: _Optional[int] = ..., expected_output_tokens: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., session_id: _Optional[str] = ..., prefill_candidates: _Optional[_Iterable[str]] = ...) -> None: ...

class EngineScore(_message.Message):
    __slots__ = ("engine_id", "rule", "value")
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    rule: str
    value: float
    def __init__(self, engine_id: _Optional[str] = ..., rule: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("request_id", "prefill_engine_id", "decode_engine_id", "read_path", "de_read_fraction", "policy", "reason", "scores", "prefill_agent_endpoint", "decode_agent_endpoint", "prefill_node", "decode_node", "pe_read_bytes", "de_read_bytes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    DECODE_ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    READ_PATH_FIELD_NUMBER: _ClassVar[int]
    DE_READ_FRACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PREFILL_AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DECODE_AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PREFILL_NODE_FIELD_NUMBER: _ClassVar[int]
    DECODE_NODE_FIELD_NUMBER: _ClassVar[int]
    PE_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    DE_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prefill_engine_id: str
    decode_engine_id: str
    read_path: ReadPath
    de_read_fraction: float
    policy: str
    reason: str
    scores: _containers.RepeatedCompositeFieldContainer[EngineScore]
    prefill_agent_endpoint: str
    decode_agent_endpoint: str
    prefill_node: str
    decode_node: str
    pe_read_bytes: int
    de_read_bytes: int
    def __init__(self, request_id: _Optional[str] = ..., prefill_engine_id: _Optional[str] = ..., decode_engine_id: _Optional[str] = ..., read_path: _Optional[_Union[ReadPath, str]] = ..., de_read_fraction: _Optional[float] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[EngineScore, _Mapping]]] = ..., prefill_agent_endpoint: _Optional[str] = ..., decode_agent_endpoint: _Optional[str] = ..., prefill_node: _Optional[str] = ..., decode_node: _Optional[str] = ..., pe_read_bytes: _Optional[int] = ..., de_read_bytes: _Optional[int] = ...) -> None: ...

class ScheduleResponse(_message.Message):
    __slots__ = ("assignment", "replayed")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    replayed: bool
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadDoneRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ReadDoneResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrefillDoneRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class PrefillDoneResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EngineStatus(_message.Message):
    __slots__ = ("engine", "last_report", "drained", "report_age_s", "assigned_requests", "assigned_tokens", "unfinished_requests", "unfinished_tokens", "free_hbm_tokens", "drain_reason")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    REPORT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FREE_HBM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    engine: Engine
    last_report: LoadReport
    drained: bool
    report_age_s: float
    assigned_requests: int
    assigned_tokens: int
    unfinished_requests: int
    unfinished_tokens: int
    free_hbm_tokens: int
    drain_reason: str
    def __init__(self, engine: _Optional[_Union[Engine, _Mapping]] = ..., last_report: _Optional[_Union[LoadReport, _Mapping]] = ..., drained: _Optional[bool] = ..., report_age_s: _Optional[float] = ..., assigned_requests: _Optional[int] = ..., assigned_tokens: _Optional[int] = ..., unfinished_requests: _Optional[int] = ..., unfinished_tokens: _Optional[int] = ..., free_hbm_tokens: _Optional[int] = ..., drain_reason: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "read_queue_length", "read_queue_tokens", "read_queue_bytes", "snic_inflight_bytes", "snic_read_bytes_per_s")
    NODE_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNIC_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNIC_READ_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    node: str
    read_queue_length: int
    read_queue_tokens: int
    read_queue_bytes: int
    snic_inflight_bytes: int
    snic_read_bytes_per_s: float
    def __init__(self, node: _Optional[str] = ..., read_queue_length: _Optional[int] = ..., read_queue_tokens: _Optional[int] = ..., read_queue_bytes: _Optional[int] = ..., snic_inflight_bytes: _Optional[int] = ..., snic_read_bytes_per_s: _Optional[float] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("policy", "engines", "decisions_total", "in_flight_requests", "nodes", "policy_params", "rejected_total")
    class PolicyParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    POLICY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    policy: str
    engines: _containers.RepeatedCompositeFieldContainer[EngineStatus]
    decisions_total: int
    in_flight_requests: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    policy_params: _containers.ScalarMap[str, float]
    rejected_total: int
    def __init__(self, policy: _Optional[str] = ..., engines: _Optional[_Iterable[_Union[EngineStatus, _Mapping]]] = ..., decisions_total: _Optional[int] = ..., in_flight_requests: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., policy_params: _Optional[_Mapping[str, float]] = ..., rejected_total: _Optional[int] = ...) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ("interval_ms",)
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    def __init__(self, interval_ms: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("correlation_id", "schedule", "complete", "cancel", "read_done", "prefill_done")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    READ_DONE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_DONE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    schedule: ScheduleRequest
    complete: CompleteRequest
    cancel: CancelRequest
    read_done: ReadDoneRequest
    prefill_done: PrefillDoneRequest
    def __init__(self, correlation_id: _Optional[int] = ..., schedule: _Optional[_Union[ScheduleRequest, _Mapping]] = ..., complete: _Optional[_Union[CompleteRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., read_done: _Optional[_Union[ReadDoneRequest, _Mapping]] = ..., prefill_done: _Optional[_Union[PrefillDoneRequest, _Mapping]] = ...) -> None: ...

class OperationError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("correlation_id", "schedule", "complete", "cancel", "error", "read_done", "prefill_done")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    READ_DONE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_DONE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: int
    schedule: ScheduleResponse
    complete: CompleteResponse
    cancel: CancelResponse
    error: OperationError
    read_done: ReadDoneResponse
    prefill_done: PrefillDoneResponse
    def __init__(self, correlation_id: _Optional[int] = ..., schedule: _Optional[_Union[ScheduleResponse, _Mapping]] = ..., complete: _Optional[_Union[CompleteResponse, _Mapping]] = ..., cancel: _Optional[_Union[CancelResponse, _Mapping]] = ..., error: _Optional[_Union[OperationError, _Mapping]] = ..., read_done: _Optional[_Union[ReadDoneResponse, _Mapping]] = ..., prefill_done: _Optional[_Union[PrefillDoneResponse, _Mapping]] = ...) -> None: ...

class SessionRequestBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SessionRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SessionRequest, _Mapping]]] = ...) -> None: ...

class SessionResponseBatch(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SessionResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SessionResponse, _Mapping]]] = ...) -> None: ...
