"""Loads into an engine's KV cache, the pure parts: target checks, write descriptors for
both vLLM layouts, notification tags and the engine's per-layer arrival count; the
connector's per-request parameters."""

from __future__ import annotations

import numpy as np
import pytest
from dualpath.v1 import agent_pb2
from dualpath_agent.engine_target import (
    LOCAL_PART,
    REMOTE_PART,
    LayerArrivals,
    layer_tag,
    load_parts,
    parse_engine_target,
    parse_tag,
)
from dualpath_agent.layout import BlockLayout
from dualpath_vllm.kv_cache import describe_layer
from dualpath_vllm.params import DualPathParams, ReadPathName, Role

LAYOUT = BlockLayout(layers=2, block_tokens=4, bytes_per_token_layer=8)  # 32 B Layer Blocks


def target_msg(**change: object) -> agent_pb2.EngineKvTarget:
    msg = agent_pb2.EngineKvTarget(
        agent_name="engine",
        agent_metadata=b"md",
        mem_type="DRAM",
        plane_addresses=[1000, 2000],
        planes=1,
        plane_block_bytes=32,
        block_stride=32,
        block_ids=[5, 2],
        transfer_id="t",
    )
    for key, value in change.items():
        if isinstance(value, list):
            msg.ClearField(key)  # type: ignore[arg-type]
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)
    return msg


def test_write_rows_put_each_layer_block_at_its_engine_block():
    target = parse_engine_target(target_msg(), LAYOUT, blocks=2)
    rows = target.write_rows(layer0_sources=[100, 500], source_layer_strides=[64, 64])
    assert rows.shape == (2, 2, 3)
    # layer 0: block 0 -> engine block 5, block 1 -> engine block 2
    assert rows[0].tolist() == [[100, 1000 + 5 * 32, 32], [500, 1000 + 2 * 32, 32]]
    # layer 1: the source steps by its layer stride, the engine by the layer's tensor
    assert rows[1].tolist() == [[164, 2000 + 5 * 32, 32], [564, 2000 + 2 * 32, 32]]


def test_two_planes_split_a_layer_block_into_k_then_v():
    msg = target_msg(planes=2, plane_addresses=[1000, 1500, 2000, 2500], plane_block_bytes=16)
    target = parse_engine_target(msg, LAYOUT, blocks=2)
    rows = target.write_rows([100, 500], [64, 64])
    assert rows.shape == (2, 4, 3)
    assert rows[0, :2].tolist() == [[100, 1000 + 5 * 32, 16], [116, 1500 + 5 * 32, 16]]


def test_subset_keeps_the_geometry_and_takes_the_block_ids():
    target = parse_engine_target(target_msg(), LAYOUT, blocks=2)
    assert target.subset(1, 2).block_ids.tolist() == [2]
    assert parse_engine_target(target.to_proto(), LAYOUT, 2).block_ids.tolist() == [5, 2]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"agent_metadata": b""}, "engine_target.agent_metadata"),
        ({"mem_type": "HBM"}, "engine_target.mem_type"),
        ({"transfer_id": ""}, "engine_target.transfer_id"),
        ({"plane_addresses": [1]}, "engine_target.plane_addresses"),
        ({"plane_block_bytes": 16}, "engine_target.plane_block_bytes"),
        ({"block_stride": 8}, "engine_target.block_stride"),
        ({"block_ids": [1]}, "engine_target.block_ids"),
        ({"block_ids": [1, 1]}, "engine_target.block_ids"),
    ],
)
def test_bad_targets_name_the_field(change, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        parse_engine_target(target_msg(**change), LAYOUT, blocks=2)


def test_tags_round_trip_and_other_notifications_are_ignored():
    tag = parse_tag(layer_tag("abc", 3, REMOTE_PART, 1, 4))
    assert tag is not None and (tag.transfer_id, tag.layer, tag.part, tag.group, tag.groups) == (
        "abc",
        3,
        "r",
        1,
        4,
    )
    assert parse_tag(b"abc:3:0") is None  # the agent-to-agent tag form
    assert parse_tag(b"abc:3:x:0:1") is None
    assert parse_tag(b"\xff\xfe") is None


def test_a_layer_is_ready_once_every_part_delivered_every_group():
    arrivals = LayerArrivals(layers=2, parts=load_parts(local_blocks=3, remote_blocks=5))
    assert arrivals.parts == (LOCAL_PART, REMOTE_PART)
    arrivals.add(parse_tag(layer_tag("t", 0, LOCAL_PART, 0, 1)))  # type: ignore[arg-type]
    assert arrivals.layers_ready() == 0  # the decode side's groups are still missing
    arrivals.add(parse_tag(layer_tag("t", 0, REMOTE_PART, 1, 2)))  # type: ignore[arg-type]
    assert arrivals.layers_ready() == 0
    arrivals.add(parse_tag(layer_tag("t", 1, REMOTE_PART, 0, 2)))  # type: ignore[arg-type]
    arrivals.add(parse_tag(layer_tag("t", 0, REMOTE_PART, 0, 2)))  # type: ignore[arg-type]
    assert arrivals.layers_ready() == 1  # layer 1 lacks its local part and a remote group
    assert load_parts(0, 4) == (REMOTE_PART,)


def test_describe_layer_reads_both_vllm_layouts():
    cpu = np.zeros((10, 2, 4, 6), dtype=np.uint16)  # (num_blocks, 2, block, heads*dim)
    layer = describe_layer(cpu.shape, [s // 2 for s in cpu.strides], 2, 4096, num_blocks=10)
    assert layer.plane_addresses == (4096,) and layer.plane_block_bytes == 2 * 4 * 6 * 2
    assert layer.block_stride == layer.plane_block_bytes
    gpu = np.zeros((2, 10, 4, 2, 3), dtype=np.uint16)  # (2, num_blocks, block, heads, dim)
    layer = describe_layer(gpu.shape, [s // 2 for s in gpu.strides], 2, 4096, num_blocks=10)
    assert layer.plane_addresses == (4096, 4096 + 10 * 4 * 6 * 2)
    assert layer.plane_block_bytes == layer.block_stride == 4 * 6 * 2
    with pytest.raises(ValueError, match="neither"):
        describe_layer((3, 10, 4), (40, 4, 1), 2, 0, num_blocks=10)


def test_params_round_trip_and_reject_bad_input_naming_the_field():
    params = DualPathParams(
        request_id="r", role=Role.PREFILL, read_path=ReadPathName.SPLIT, de_read_fraction=0.4,
        decode_agent_endpoint="d:1",
    )  # fmt: skip
    assert DualPathParams.from_body(params.to_body()) == params
    assert DualPathParams.from_body(None) == DualPathParams()  # standalone
    with pytest.raises(ValueError, match="decode_agent_endpoint"):
        DualPathParams(read_path=ReadPathName.DE_READ)
    with pytest.raises(ValueError, match="de_read_fraction"):
        DualPathParams(read_path=ReadPathName.SPLIT, decode_agent_endpoint="d:1")
    with pytest.raises(ValueError, match="role"):
        DualPathParams.from_body({"dualpath": {"role": "boss"}})
    with pytest.raises(ValueError, match="unknown fields"):
        DualPathParams.from_body({"dualpath": {"path": "PE_READ"}})
    assert ReadPathName.from_proto(ReadPathName.DE_READ.proto) is ReadPathName.DE_READ
