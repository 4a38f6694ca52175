from __future__ import annotations

import json
import logging

import httpx
import pytest
from dualpath_common.logs import JsonFormatter
from dualpath_common.models import MODEL_PRESETS, get_model_preset
from dualpath_common.observability import ObservabilityServer
from prometheus_client import CollectorRegistry, Counter


def test_model_presets_geometry():
    ds = get_model_preset("deepseek-v3.2-660b")
    assert 39_000 < ds.kv_bytes_per_token < 41_000  # ~40 KB/token (paper notes)
    assert get_model_preset("qwen2.5-32b").kv_bytes_per_token == 256 * 1024
    assert ds.block_bytes(64) == 61 * 64 * 656
    with pytest.raises(ValueError, match="known:"):
        get_model_preset("nope")
    assert all(p.layers > 0 and p.bytes_per_token_layer > 0 for p in MODEL_PRESETS.values())


def test_json_log_lines_carry_extra_fields():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    rec.request_id = "r1"
    entry = json.loads(JsonFormatter("agent").format(rec))
    assert entry["msg"] == "hello w"
    assert entry["component"] == "agent"
    assert entry["request_id"] == "r1"


def test_observability_server_metrics_health_ready():
    reg = CollectorRegistry()
    Counter("dp_test_things", "things", registry=reg).inc(3)
    state = {"ready": False}
    srv = ObservabilityServer(
        readiness=lambda: (state["ready"], "ok" if state["ready"] else "warming up"),
        registry=reg,
    ).start()
    try:
        base = f"http://{srv.address}"
        assert "dp_test_things_total 3.0" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/healthz").status_code == 200
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and "warming up" in r.text
        state["ready"] = True
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        srv.stop()
