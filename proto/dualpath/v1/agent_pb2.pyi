from dualpath.v1 import traffic_controller_pb2 as _traffic_controller_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGION_KIND_UNSPECIFIED: _ClassVar[RegionKind]
    REGION_KIND_LOAD: _ClassVar[RegionKind]
    REGION_KIND_MERGED: _ClassVar[RegionKind]
REGION_KIND_UNSPECIFIED: RegionKind
REGION_KIND_LOAD: RegionKind
REGION_KIND_MERGED: RegionKind

class BlockRef(_message.Message):
    __slots__ = ("block_hash", "parent_hash", "tokens", "token_ids")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    block_hash: bytes
    parent_hash: bytes
    tokens: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_hash: _Optional[bytes] = ..., parent_hash: _Optional[bytes] = ..., tokens: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BlockLayout(_message.Message):
    __slots__ = ("layers", "block_tokens", "bytes_per_token_layer")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_TOKEN_LAYER_FIELD_NUMBER: _ClassVar[int]
    layers: int
    block_tokens: int
    bytes_per_token_layer: int
    def __init__(self, layers: _Optional[int] = ..., block_tokens: _Optional[int] = ..., bytes_per_token_layer: _Optional[int] = ...) -> None: ...

class BlockChecksums(_message.Message):
    __slots__ = ("block_hash", "layer_crc32c")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    LAYER_CRC32C_FIELD_NUMBER: _ClassVar[int]
    block_hash: bytes
    layer_crc32c: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_hash: _Optional[bytes] = ..., layer_crc32c: _Optional[_Iterable[int]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("serving", "message")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    message: str
    def __init__(self, serving: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("node", "role", "peer_transport", "storage_transport", "fallback_reason", "qos_applied", "blocks_stored", "bytes_stored", "capacity_bytes", "read_queue_length", "read_queue_bytes", "snic_inflight_bytes", "buffer_bytes_total", "buffer_bytes_free", "checksum_failures", "evictions", "device_tier", "device_bytes_total", "device_bytes_free", "snic_read_bytes_per_s", "direct_io", "agent_name", "held_requests", "active_transfers", "storage_reads_completed", "storage_bytes_read", "device_detail", "shutting_down", "read_queue_tokens")
    class QosAppliedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    QOS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_STORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SNIC_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUFFER_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BUFFER_BYTES_FREE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TIER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BYTES_FREE_FIELD_NUMBER: _ClassVar[int]
    SNIC_READ_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DIRECT_IO_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    HELD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_READS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    DEVICE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    READ_QUEUE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    node: str
    role: str
    peer_transport: str
    storage_transport: str
    fallback_reason: str
    qos_applied: _containers.ScalarMap[str, str]
    blocks_stored: int
    bytes_stored: int
    capacity_bytes: int
    read_queue_length: int
    read_queue_bytes: int
    snic_inflight_bytes: int
    buffer_bytes_total: int
    buffer_bytes_free: int
    checksum_failures: int
    evictions: int
    device_tier: str
    device_bytes_total: int
    device_bytes_free: int
    snic_read_bytes_per_s: float
    direct_io: bool
    agent_name: str
    held_requests: int
    active_transfers: int
    storage_reads_completed: int
    storage_bytes_read: int
    device_detail: str
    shutting_down: bool
    read_queue_tokens: int
    def __init__(self, node: _Optional[str] = ..., role: _Optional[str] = ..., peer_transport: _Optional[str] = ..., storage_transport: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., qos_applied: _Optional[_Mapping[str, str]] = ..., blocks_stored: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., read_queue_length: _Optional[int] = ..., read_queue_bytes: _Optional[int] = ..., snic_inflight_bytes: _Optional[int] = ..., buffer_bytes_total: _Optional[int] = ..., buffer_bytes_free: _Optional[int] = ..., checksum_failures: _Optional[int] = ..., evictions: _Optional[int] = ..., device_tier: _Optional[str] = ..., device_bytes_total: _Optional[int] = ..., device_bytes_free: _Optional[int] = ..., snic_read_bytes_per_s: _Optional[float] = ..., direct_io: _Optional[bool] = ..., agent_name: _Optional[str] = ..., held_requests: _Optional[int] = ..., active_transfers: _Optional[int] = ..., storage_reads_completed: _Optional[int] = ..., storage_bytes_read: _Optional[int] = ..., device_detail: _Optional[str] = ..., shutting_down: _Optional[bool] = ..., read_queue_tokens: _Optional[int] = ...) -> None: ...

class PeerInfoRequest(_message.Message):
    __slots__ = ("caller_metadata", "caller_name")
    CALLER_METADATA_FIELD_NUMBER: _ClassVar[int]
    CALLER_NAME_FIELD_NUMBER: _ClassVar[int]
    caller_metadata: bytes
    caller_name: str
    def __init__(self, caller_metadata: _Optional[bytes] = ..., caller_name: _Optional[str] = ...) -> None: ...

class PeerInfoResponse(_message.Message):
    __slots__ = ("agent_name", "metadata", "peer_transport", "device_mem_type")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PEER_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    metadata: bytes
    peer_transport: str
    device_mem_type: str
    def __init__(self, agent_name: _Optional[str] = ..., metadata: _Optional[bytes] = ..., peer_transport: _Optional[str] = ..., device_mem_type: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("block_hashes",)
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, block_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("prefix_blocks", "present")
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    prefix_blocks: int
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, prefix_blocks: _Optional[int] = ..., present: _Optional[_Iterable[bool]] = ...) -> None: ...

class EngineKvTarget(_message.Message):
    __slots__ = ("agent_name", "agent_metadata", "mem_type", "plane_addresses", "planes", "plane_block_bytes", "block_stride", "block_ids", "transfer_id")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_METADATA_FIELD_NUMBER: _ClassVar[int]
    MEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    PLANE_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    PLANES_FIELD_NUMBER: _ClassVar[int]
    PLANE_BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_STRIDE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    agent_metadata: bytes
    mem_type: str
    plane_addresses: _containers.RepeatedScalarFieldContainer[int]
    planes: int
    plane_block_bytes: int
    block_stride: int
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    transfer_id: str
    def __init__(self, agent_name: _Optional[str] = ..., agent_metadata: _Optional[bytes] = ..., mem_type: _Optional[str] = ..., plane_addresses: _Optional[_Iterable[int]] = ..., planes: _Optional[int] = ..., plane_block_bytes: _Optional[int] = ..., block_stride: _Optional[int] = ..., block_ids: _Optional[_Iterable[int]] = ..., transfer_id: _Optional[str] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("request_id", "blocks", "layout", "read_path", "de_read_fraction", "decode_agent_endpoint", "release_after_load", "missed_tokens", "keep_for_merge", "engine_target", "handoff")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    READ_PATH_FIELD_NUMBER: _ClassVar[int]
    DE_READ_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DECODE_AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_AFTER_LOAD_FIELD_NUMBER: _ClassVar[int]
    MISSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FOR_MERGE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_TARGET_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    layout: BlockLayout
    read_path: _traffic_controller_pb2.ReadPath
    de_read_fraction: float
    decode_agent_endpoint: str
    release_after_load: bool
    missed_tokens: int
    keep_for_merge: bool
    engine_target: EngineKvTarget
    handoff: bool
    def __init__(self, request_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., read_path: _Optional[_Union[_traffic_controller_pb2.ReadPath, str]] = ..., de_read_fraction: _Optional[float] = ..., decode_agent_endpoint: _Optional[str] = ..., release_after_load: _Optional[bool] = ..., missed_tokens: _Optional[int] = ..., keep_for_merge: _Optional[bool] = ..., engine_target: _Optional[_Union[EngineKvTarget, _Mapping]] = ..., handoff: _Optional[bool] = ...) -> None: ...

class LoadProgress(_message.Message):
    __slots__ = ("request_id", "layer", "bytes_loaded", "bytes_total", "done", "bytes_from_local_storage", "bytes_from_peer", "blocks_verified", "region_address", "region_length", "region_layer_stride", "layers_ready", "elapsed_s", "blocks_local", "blocks_remote", "read_path", "local_storage_read_s", "remote_storage_read_s", "peer_stream_s", "fallback_blocks", "fallback_reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOADED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_LOCAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    REGION_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_LENGTH_FIELD_NUMBER: _ClassVar[int]
    REGION_LAYER_STRIDE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_READY_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_LOCAL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_REMOTE_FIELD_NUMBER: _ClassVar[int]
    READ_PATH_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STORAGE_READ_S_FIELD_NUMBER: _ClassVar[int]
    REMOTE_STORAGE_READ_S_FIELD_NUMBER: _ClassVar[int]
    PEER_STREAM_S_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    layer: int
    bytes_loaded: int
    bytes_total: int
    done: bool
    bytes_from_local_storage: int
    bytes_from_peer: int
    blocks_verified: int
    region_address: int
    region_length: int
    region_layer_stride: int
    layers_ready: int
    elapsed_s: float
    blocks_local: int
    blocks_remote: int
    read_path: _traffic_controller_pb2.ReadPath
    local_storage_read_s: float
    remote_storage_read_s: float
    peer_stream_s: float
    fallback_blocks: int
    fallback_reason: str
    def __init__(self, request_id: _Optional[str] = ..., layer: _Optional[int] = ..., bytes_loaded: _Optional[int] = ..., bytes_total: _Optional[int] = ..., done: _Optional[bool] = ..., bytes_from_local_storage: _Optional[int] = ..., bytes_from_peer: _Optional[int] = ..., blocks_verified: _Optional[int] = ..., region_address: _Optional[int] = ..., region_length: _Optional[int] = ..., region_layer_stride: _Optional[int] = ..., layers_ready: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., blocks_local: _Optional[int] = ..., blocks_remote: _Optional[int] = ..., read_path: _Optional[_Union[_traffic_controller_pb2.ReadPath, str]] = ..., local_storage_read_s: _Optional[float] = ..., remote_storage_read_s: _Optional[float] = ..., peer_stream_s: _Optional[float] = ..., fallback_blocks: _Optional[int] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class ServeLayersRequest(_message.Message):
    __slots__ = ("request_id", "blocks", "layout", "target_agent", "target_metadata", "target_mem_type", "target_address", "target_layer_stride", "transfer_id", "keep_for_merge", "engine_target")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_METADATA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_STRIDE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_FOR_MERGE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_TARGET_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    layout: BlockLayout
    target_agent: str
    target_metadata: bytes
    target_mem_type: str
    target_address: int
    target_layer_stride: int
    transfer_id: str
    keep_for_merge: bool
    engine_target: EngineKvTarget
    def __init__(self, request_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., target_agent: _Optional[str] = ..., target_metadata: _Optional[bytes] = ..., target_mem_type: _Optional[str] = ..., target_address: _Optional[int] = ..., target_layer_stride: _Optional[int] = ..., transfer_id: _Optional[str] = ..., keep_for_merge: _Optional[bool] = ..., engine_target: _Optional[_Union[EngineKvTarget, _Mapping]] = ...) -> None: ...

class ServeLayersProgress(_message.Message):
    __slots__ = ("request_id", "bytes_sent", "done", "staged", "checksums", "storage_bytes", "storage_read_s", "agent_name", "group", "groups", "first_block")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_READ_S_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    bytes_sent: int
    done: bool
    staged: bool
    checksums: _containers.RepeatedCompositeFieldContainer[BlockChecksums]
    storage_bytes: int
    storage_read_s: float
    agent_name: str
    group: int
    groups: int
    first_block: int
    def __init__(self, request_id: _Optional[str] = ..., bytes_sent: _Optional[int] = ..., done: _Optional[bool] = ..., staged: _Optional[bool] = ..., checksums: _Optional[_Iterable[_Union[BlockChecksums, _Mapping]]] = ..., storage_bytes: _Optional[int] = ..., storage_read_s: _Optional[float] = ..., agent_name: _Optional[str] = ..., group: _Optional[int] = ..., groups: _Optional[int] = ..., first_block: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("request_id", "missed_tokens", "missed_kv", "new_blocks", "persist", "decode_agent_endpoint")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MISSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MISSED_KV_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    DECODE_AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    missed_tokens: int
    missed_kv: bytes
    new_blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    persist: bool
    decode_agent_endpoint: str
    def __init__(self, request_id: _Optional[str] = ..., missed_tokens: _Optional[int] = ..., missed_kv: _Optional[bytes] = ..., new_blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., persist: _Optional[bool] = ..., decode_agent_endpoint: _Optional[str] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("bytes_sent_to_decode", "bytes_decode_had", "blocks_persisted", "blocks_already_present", "elapsed_s", "persist_error")
    BYTES_SENT_TO_DECODE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DECODE_HAD_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    PERSIST_ERROR_FIELD_NUMBER: _ClassVar[int]
    bytes_sent_to_decode: int
    bytes_decode_had: int
    blocks_persisted: int
    blocks_already_present: int
    elapsed_s: float
    persist_error: str
    def __init__(self, bytes_sent_to_decode: _Optional[int] = ..., bytes_decode_had: _Optional[int] = ..., blocks_persisted: _Optional[int] = ..., blocks_already_present: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., persist_error: _Optional[str] = ...) -> None: ...

class MergeRequest(_message.Message):
    __slots__ = ("request_id", "layout", "prefix_blocks", "prefix_checksums", "missed_tokens", "missed_layer_crc32c", "new_blocks", "persist", "source_agent", "source_metadata", "source_mem_type", "source_address", "source_layer_stride")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    MISSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MISSED_LAYER_CRC32C_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_AGENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LAYER_STRIDE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    layout: BlockLayout
    prefix_blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    prefix_checksums: _containers.RepeatedCompositeFieldContainer[BlockChecksums]
    missed_tokens: int
    missed_layer_crc32c: _containers.RepeatedScalarFieldContainer[int]
    new_blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    persist: bool
    source_agent: str
    source_metadata: bytes
    source_mem_type: str
    source_address: int
    source_layer_stride: int
    def __init__(self, request_id: _Optional[str] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., prefix_blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., prefix_checksums: _Optional[_Iterable[_Union[BlockChecksums, _Mapping]]] = ..., missed_tokens: _Optional[int] = ..., missed_layer_crc32c: _Optional[_Iterable[int]] = ..., new_blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., persist: _Optional[bool] = ..., source_agent: _Optional[str] = ..., source_metadata: _Optional[bytes] = ..., source_mem_type: _Optional[str] = ..., source_address: _Optional[int] = ..., source_layer_stride: _Optional[int] = ...) -> None: ...

class MergeResponse(_message.Message):
    __slots__ = ("bytes_merged", "blocks_persisted", "bytes_from_peer", "bytes_from_staging", "blocks_already_present", "persist_error")
    BYTES_MERGED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_STAGING_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    PERSIST_ERROR_FIELD_NUMBER: _ClassVar[int]
    bytes_merged: int
    blocks_persisted: int
    bytes_from_peer: int
    bytes_from_staging: int
    blocks_already_present: int
    persist_error: str
    def __init__(self, bytes_merged: _Optional[int] = ..., blocks_persisted: _Optional[int] = ..., bytes_from_peer: _Optional[int] = ..., bytes_from_staging: _Optional[int] = ..., blocks_already_present: _Optional[int] = ..., persist_error: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released", "bytes_freed")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    def __init__(self, released: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class BlockChunk(_message.Message):
    __slots__ = ("ref", "total_bytes", "data", "crc32c", "layout", "synthetic")
    REF_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    ref: BlockRef
    total_bytes: int
    data: bytes
    crc32c: int
    layout: BlockLayout
    synthetic: bool
    def __init__(self, ref: _Optional[_Union[BlockRef, _Mapping]] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32c: _Optional[int] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., synthetic: _Optional[bool] = ...) -> None: ...

class PutBlocksResponse(_message.Message):
    __slots__ = ("blocks_written", "blocks_already_present")
    BLOCKS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    blocks_written: int
    blocks_already_present: int
    def __init__(self, blocks_written: _Optional[int] = ..., blocks_already_present: _Optional[int] = ...) -> None: ...

class ReadBlockRequest(_message.Message):
    __slots__ = ("block_hash", "layer", "layout")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    block_hash: bytes
    layer: int
    layout: BlockLayout
    def __init__(self, block_hash: _Optional[bytes] = ..., layer: _Optional[int] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ...) -> None: ...

class ReadBlockChunk(_message.Message):
    __slots__ = ("data", "layer_crc32c", "tokens")
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAYER_CRC32C_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    layer_crc32c: _containers.RepeatedScalarFieldContainer[int]
    tokens: int
    def __init__(self, data: _Optional[bytes] = ..., layer_crc32c: _Optional[_Iterable[int]] = ..., tokens: _Optional[int] = ...) -> None: ...

class ReadRegionRequest(_message.Message):
    __slots__ = ("request_id", "kind", "layer")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: RegionKind
    layer: int
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[_Union[RegionKind, str]] = ..., layer: _Optional[int] = ...) -> None: ...

class ReadRegionChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...
