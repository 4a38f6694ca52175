"""The pure parts of dualpath_vllm: how an engine is launched (argv, environment), where
the engines' interpreter is found, the tiny model's vocabulary and run comparisons. None
of this needs vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dualpath_vllm.model import CHAT_TEMPLATE, ROLE_TOKENS, VOCAB_SIZE, vocabulary
from dualpath_vllm.process import EngineSpec, EnginesVenvMissing, engines_python
from dualpath_vllm.reference import Completion, compare_runs


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_spec_renders_the_cpu_server_command_line():
    spec = EngineSpec(model_dir=Path("/m"), port=18000, engine_id="pe0")
    argv = spec.argv("/venv/bin/python")
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert option(argv, "--model") == "/m"
    assert option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--port") == "18000"
    assert option(argv, "--block-size") == "64"
    assert option(argv, "--gpu-memory-utilization") == "0.1"
    assert option(argv, "--dtype") == "bfloat16"
    assert option(argv, "--seed") == "0"
    assert option(argv, "--max-model-len") == "4096"
    assert option(argv, "--kv-cache-memory-bytes") == str(2**28)  # 0.25 GiB by default
    assert "--enforce-eager" in argv
    assert "--kv-transfer-config" not in argv
    assert spec.base_url == "http://127.0.0.1:18000"


def test_spec_passes_the_kv_transfer_config_as_json_and_extra_args_last():
    config = {
        "kv_connector": "DualPathConnector",
        "kv_connector_module_path": "dualpath_vllm.connector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"agent": "127.0.0.1:5000"},
    }
    spec = EngineSpec(
        model_dir=Path("/m"),
        port=1,
        kv_transfer_config=config,
        extra_args=["--no-enable-prefix-caching"],
    )
    argv = spec.argv("python")
    assert json.loads(option(argv, "--kv-transfer-config")) == config
    assert argv[-1] == "--no-enable-prefix-caching"


def test_kv_cache_size_may_be_a_fraction_of_a_gib():
    argv = EngineSpec(model_dir=Path("/m"), port=1, kv_cache_gib=0.25).argv("python")
    assert option(argv, "--kv-cache-memory-bytes") == str(256 * 2**20)


def test_spec_environment_keeps_threads_and_network_in():
    spec = EngineSpec(model_dir=Path("/m"), port=1, env={"EXTRA": "1"})
    env = spec.environ({"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env["PATH"] == "/bin"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["EXTRA"] == "1"
    # The spec's own env wins over the defaults.
    override = EngineSpec(model_dir=Path("/m"), port=1, env={"OMP_NUM_THREADS": "2"})
    assert override.environ({})["OMP_NUM_THREADS"] == "2"


def test_missing_engines_python_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.delenv("DUALPATH_ENGINES_PYTHON", raising=False)
    monkeypatch.setenv("DUALPATH_ENGINES_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(EnginesVenvMissing, match="make engines-venv"):
        engines_python()
    monkeypatch.setenv("DUALPATH_ENGINES_PYTHON", str(tmp_path / "python"))
    with pytest.raises(EnginesVenvMissing, match="DUALPATH_ENGINES_PYTHON"):
        engines_python()


def test_engines_python_is_taken_from_the_venv_without_resolving_its_symlink(monkeypatch, tmp_path):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to("/bin/sh")
    monkeypatch.delenv("DUALPATH_ENGINES_PYTHON", raising=False)
    monkeypatch.setenv("DUALPATH_ENGINES_VENV", str(tmp_path / "venv"))
    assert engines_python() == bin_dir / "python"


def test_vocabulary_is_fixed_and_covers_the_chat_template():
    words = vocabulary()
    assert words == vocabulary()
    assert len(words) == len(set(words)) == VOCAB_SIZE
    assert words[:4] == ["<unk>", "<s>", "</s>", "<pad>"]  # Llama's bos 1 / eos 2
    roles = {role.strip("<|>") for role in ROLE_TOKENS} - {"end"}
    assert all(f"<|{role}|>" in words for role in roles)
    assert "<|end|>" in CHAT_TEMPLATE and "add_generation_prompt" in CHAT_TEMPLATE


def test_compare_runs_reports_where_tokens_part_and_how_far_logprobs_moved():
    a = Completion([5, 6, 7, 8], [-0.1, -0.2, -0.3, -0.4])
    same = compare_runs(a, Completion([5, 6, 7, 8], [-0.11, -0.2, -0.3, -0.42]), 0.05)
    assert same.same and same.tokens_equal
    assert same.max_logprob_diff == pytest.approx(0.02)

    drift = compare_runs(a, Completion([5, 6, 7, 8], [-0.1, -0.9, -0.3, -0.4]), 0.05)
    assert drift.tokens_equal and not drift.logprobs_close and not drift.same

    # After the first differing token the contexts differ: later logprobs are ignored.
    parted = compare_runs(a, Completion([5, 9, 1, 2], [-0.1, -0.25, -5.0, -5.0]), 0.1)
    assert parted.first_token_mismatch == 1
    assert parted.max_logprob_diff == pytest.approx(0.05)
    assert not parted.same
    assert "position 1" in str(parted)

    shorter = compare_runs(a, Completion([5, 6], [-0.1, -0.2]))
    assert shorter.first_token_mismatch == 2
