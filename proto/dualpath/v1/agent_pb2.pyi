from dualpath.v1 import traffic_controller_pb2 as _traffic_controller_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlockRef(_message.Message):
    __slots__ = ("block_hash", "parent_hash", "tokens")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    block_hash: bytes
    parent_hash: bytes
    tokens: int
    def __init__(self, block_hash: _Optional[bytes] = ..., parent_hash: _Optional[bytes] = ..., tokens: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("node", "role", "peer_transport", "storage_transport", "fallback_reason", "qos_applied", "blocks_stored", "bytes_stored", "capacity_bytes", "read_queue_length", "read_queue_bytes", "snic_inflight_bytes", "buffer_bytes_total", "buffer_bytes_free", "checksum_failures", "evictions", "device_tier")
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
    def __init__(self, node: _Optional[str] = ..., role: _Optional[str] = ..., peer_transport: _Optional[str] = ..., storage_transport: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., qos_applied: _Optional[_Mapping[str, str]] = ..., blocks_stored: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., read_queue_length: _Optional[int] = ..., read_queue_bytes: _Optional[int] = ..., snic_inflight_bytes: _Optional[int] = ..., buffer_bytes_total: _Optional[int] = ..., buffer_bytes_free: _Optional[int] = ..., checksum_failures: _Optional[int] = ..., evictions: _Optional[int] = ..., device_tier: _Optional[str] = ...) -> None: ...

class PeerInfoRequest(_message.Message):
    __slots__ = ("caller_nixl_metadata", "caller_name")
    CALLER_NIXL_METADATA_FIELD_NUMBER: _ClassVar[int]
    CALLER_NAME_FIELD_NUMBER: _ClassVar[int]
    caller_nixl_metadata: bytes
    caller_name: str
    def __init__(self, caller_nixl_metadata: _Optional[bytes] = ..., caller_name: _Optional[str] = ...) -> None: ...

class PeerInfoResponse(_message.Message):
    __slots__ = ("agent_name", "nixl_metadata", "peer_transport", "fallback_endpoint")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NIXL_METADATA_FIELD_NUMBER: _ClassVar[int]
    PEER_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    nixl_metadata: bytes
    peer_transport: str
    fallback_endpoint: str
    def __init__(self, agent_name: _Optional[str] = ..., nixl_metadata: _Optional[bytes] = ..., peer_transport: _Optional[str] = ..., fallback_endpoint: _Optional[str] = ...) -> None: ...

class BlockLayout(_message.Message):
    __slots__ = ("layers", "block_tokens", "bytes_per_token_layer")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_TOKEN_LAYER_FIELD_NUMBER: _ClassVar[int]
    layers: int
    block_tokens: int
    bytes_per_token_layer: int
    def __init__(self, layers: _Optional[int] = ..., block_tokens: _Optional[int] = ..., bytes_per_token_layer: _Optional[int] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("request_id", "blocks", "layout", "read_path", "de_read_fraction", "decode_agent_endpoint", "release_after_load")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    READ_PATH_FIELD_NUMBER: _ClassVar[int]
    DE_READ_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DECODE_AGENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_AFTER_LOAD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    layout: BlockLayout
    read_path: _traffic_controller_pb2.ReadPath
    de_read_fraction: float
    decode_agent_endpoint: str
    release_after_load: bool
    def __init__(self, request_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., read_path: _Optional[_Union[_traffic_controller_pb2.ReadPath, str]] = ..., de_read_fraction: _Optional[float] = ..., decode_agent_endpoint: _Optional[str] = ..., release_after_load: _Optional[bool] = ...) -> None: ...

class LoadProgress(_message.Message):
    __slots__ = ("request_id", "layer", "bytes_loaded", "bytes_total", "done", "bytes_from_local_storage", "bytes_from_peer", "blocks_verified")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOADED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_LOCAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FROM_PEER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    layer: int
    bytes_loaded: int
    bytes_total: int
    done: bool
    bytes_from_local_storage: int
    bytes_from_peer: int
    blocks_verified: int
    def __init__(self, request_id: _Optional[str] = ..., layer: _Optional[int] = ..., bytes_loaded: _Optional[int] = ..., bytes_total: _Optional[int] = ..., done: _Optional[bool] = ..., bytes_from_local_storage: _Optional[int] = ..., bytes_from_peer: _Optional[int] = ..., blocks_verified: _Optional[int] = ...) -> None: ...

class ServeLayersRequest(_message.Message):
    __slots__ = ("request_id", "blocks", "layout", "target_agent", "target_address", "target_length")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_AGENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LENGTH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    layout: BlockLayout
    target_agent: str
    target_address: int
    target_length: int
    def __init__(self, request_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., target_agent: _Optional[str] = ..., target_address: _Optional[int] = ..., target_length: _Optional[int] = ...) -> None: ...

class ServeLayersProgress(_message.Message):
    __slots__ = ("request_id", "layer", "bytes_sent", "done")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    layer: int
    bytes_sent: int
    done: bool
    def __init__(self, request_id: _Optional[str] = ..., layer: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class BlockChunk(_message.Message):
    __slots__ = ("ref", "total_bytes", "data", "checksum")
    REF_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ref: BlockRef
    total_bytes: int
    data: bytes
    checksum: bytes
    def __init__(self, ref: _Optional[_Union[BlockRef, _Mapping]] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., checksum: _Optional[bytes] = ...) -> None: ...

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
    __slots__ = ("data", "checksum")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    checksum: bytes
    def __init__(self, data: _Optional[bytes] = ..., checksum: _Optional[bytes] = ...) -> None: ...

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

class MergeRequest(_message.Message):
    __slots__ = ("request_id", "blocks", "layout", "source_agent", "source_address", "source_length", "persist")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_AGENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    layout: BlockLayout
    source_agent: str
    source_address: int
    source_length: int
    persist: bool
    def __init__(self, request_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., layout: _Optional[_Union[BlockLayout, _Mapping]] = ..., source_agent: _Optional[str] = ..., source_address: _Optional[int] = ..., source_length: _Optional[int] = ..., persist: _Optional[bool] = ...) -> None: ...

class MergeResponse(_message.Message):
    __slots__ = ("bytes_merged", "blocks_persisted")
    BYTES_MERGED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    bytes_merged: int
    blocks_persisted: int
    def __init__(self, bytes_merged: _Optional[int] = ..., blocks_persisted: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
