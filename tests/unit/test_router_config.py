"""The router's configuration and its reading of vLLM's /metrics (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dualpath_router.config import ConfigError, build_config, parse_engine_arg
from dualpath_router.vllm_metrics import (
    MetricsFormatError,
    NodeQueue,
    engine_load,
    parse_vllm_metrics,
)

PREFILL = "id=prefill-0,role=prefill,url=http://127.0.0.1:8001,node=node-0,agent=127.0.0.1:7001"
DECODE = (
    "id=decode-0,role=decode,url=http://127.0.0.1:8002/,node=node-1,agent=127.0.0.1:7002,"
    "hbm_tokens=5000,group=g1"
)


def config(*engines: str, engines_file: Path | None = None, **settings):  # type: ignore[no-untyped-def]
    return build_config(
        engine_args=list(engines),
        engines_file=engines_file,
        controller=settings.pop("controller", "127.0.0.1:50051"),
        hash_namespace=settings.pop("hash_namespace", "tiny"),
        **settings,
    )


def test_engine_specs_from_flags():
    cfg = config(PREFILL, DECODE)
    prefill, decode = cfg.engines
    assert (prefill.id, prefill.role, prefill.hbm_tokens, prefill.group) == (
        "prefill-0",
        "prefill",
        None,
        "",
    )
    assert decode.url == "http://127.0.0.1:8002"  # trailing slash dropped
    assert (decode.hbm_tokens, decode.group, decode.agent) == (5000, "g1", "127.0.0.1:7002")
    assert cfg.prefill_engines == [prefill]
    assert cfg.kv_bytes_per_token == 1024 and cfg.block_tokens == 64


def test_engines_file_yaml_and_json(tmp_path):
    path = tmp_path / "engines.yaml"
    path.write_text(
        "- {id: p, role: prefill, url: 'http://h:1', node: n0, agent: 'h:2'}\n"
        "- {id: d, role: decode, url: 'http://h:3', node: n1, agent: 'h:4', hbm_tokens: 64}\n"
    )
    assert [e.id for e in config(engines_file=path).engines] == ["p", "d"]
    path = tmp_path / "engines.json"
    path.write_text(
        '{"engines": [{"id": "d", "role": "decode", "url": "http://h:3", "node": "n1",'
        ' "agent": "h:4"}]}'
    )
    assert [e.id for e in config(PREFILL, engines_file=path).engines] == ["prefill-0", "d"]


@pytest.mark.parametrize(
    ("engines", "words"),
    [
        ([PREFILL.replace("role=prefill", "role=both"), DECODE], ["prefill-0", "role"]),
        ([PREFILL.replace("http://", "ftp://"), DECODE], ["prefill-0", "url", "http://"]),
        ([PREFILL.replace("agent=127.0.0.1:7001", "agent=nope"), DECODE], ["agent", "host:port"]),
        ([PREFILL + ",hbm_tokens=-4", DECODE], ["hbm_tokens", "greater than 0"]),
        ([PREFILL + ",hbm_tokens=lots", DECODE], ["hbm_tokens", "integer"]),
        ([PREFILL + ",colour=red", DECODE], ["colour", "Extra inputs"]),
        ([PREFILL.replace(",node=node-0", ""), DECODE], ["node", "Field required"]),
        ([PREFILL + ",id=x", DECODE], ["'id' given twice"]),
        ([PREFILL + ",junk", DECODE], ["key=value"]),
        ([PREFILL], ["at least one decode engine"]),
        ([PREFILL, PREFILL, DECODE], ["duplicate engine id", "prefill-0"]),
        ([], ["no engines"]),
    ],
)
def test_bad_engines_fail_naming_the_engine_and_field(engines, words):
    with pytest.raises(ConfigError) as info:
        config(*engines)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"controller": "nowhere"}, ["controller", "host:port"]),
        ({"block_tokens": 0}, ["block_tokens"]),
        ({"hash_namespace": ""}, ["hash_namespace"]),
        ({"max_body_bytes": -1}, ["max_body_bytes"]),
    ],
)
def test_bad_settings_name_the_field(settings, words):
    with pytest.raises(ConfigError) as info:
        config(PREFILL, DECODE, **settings)
    for word in words:
        assert word in str(info.value)


def test_engines_file_errors(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("engines: 5\n")
    with pytest.raises(ConfigError, match="list of engine mappings"):
        config(engines_file=path)
    path.write_text("- {id: p, role: prefill, url: 'http://h:1', node: n0, agent: bad}\n")
    with pytest.raises(ConfigError, match=r"e\.yaml \[0\].*agent"):
        config(DECODE, engines_file=path)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        config(engines_file=tmp_path / "missing.yaml")


def test_an_engines_file_may_start_empty_or_one_sided(tmp_path):
    """Engines come later through the watched file (a ConfigMap the operator fills): the
    router starts without them and is not ready until they are up."""
    path = tmp_path / "engines.yaml"
    path.write_text("")
    cfg = config(engines_file=path)
    assert cfg.engines == () and cfg.fixed_engines == () and cfg.engines_file == path
    path.write_text("engines: []\n")
    assert config(engines_file=path).engines == ()
    cfg = config(PREFILL, engines_file=path)
    assert [e.id for e in cfg.fixed_engines] == ["prefill-0"]
    path.write_text("- {id: prefill-0, role: prefill, url: 'http://h:1', node: n, agent: 'h:2'}\n")
    with pytest.raises(ConfigError, match="duplicate engine id"):
        config(PREFILL, engines_file=path)


def test_parse_engine_arg_keeps_values_raw():
    assert parse_engine_arg("id=a, role = decode") == {"id": "a", "role": "decode"}


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} 0.25
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="64",engine="0",num_gpu_blocks="100"} 1.0
vllm:cache_config_info{block_size="64",engine="1",num_gpu_blocks="100"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
"""


def test_vllm_metrics_are_summed_over_engine_cores():
    stats = parse_vllm_metrics(VLLM_METRICS)
    assert (stats.running, stats.waiting) == (4, 2)
    assert stats.kv_usage == pytest.approx(0.375)
    assert stats.kv_capacity_tokens == 2 * 100 * 64


def test_older_vllm_names_and_missing_capacity():
    text = (
        "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.1\n"
    )
    stats = parse_vllm_metrics(text)
    assert (stats.running, stats.kv_usage, stats.kv_capacity_tokens) == (1, 0.1, None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("process_cpu_seconds_total 1\n", "missing vllm:num_requests_running"),
        ("vllm:num_requests_running{ 1\n", "not Prometheus text"),
    ],
)
def test_not_vllm_metrics(text, words):
    with pytest.raises(MetricsFormatError, match=words):
        parse_vllm_metrics(text)


def test_engine_load_from_stats():
    stats = parse_vllm_metrics(VLLM_METRICS)
    load = engine_load(stats, 10_000, node=NodeQueue(2, 300, 4096, 100))
    assert load.unfinished_requests == 6
    assert load.unfinished_tokens == 3750  # 37.5 % of the KV in use
    assert load.free_hbm_tokens == 6250
    assert (load.read_queue_length, load.read_queue_tokens, load.read_queue_bytes) == (2, 300, 4096)
    assert load.snic_inflight_bytes == 100
    # What the router itself has in flight there is never under-reported.
    routed = engine_load(stats, 10_000, routed_requests=9, routed_tokens=8000)
    assert (routed.unfinished_requests, routed.unfinished_tokens) == (9, 8000)
    assert routed.read_queue_length == 0
