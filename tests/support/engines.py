"""Real vLLM engines for tests: the tiny local model (made once per machine) and the
connector configuration that points an engine at its node's agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualpath_vllm.config import kv_transfer_config
from dualpath_vllm.model import default_model_dir, ensure_model_subprocess


def tiny_model() -> Path:
    """The tiny random-weight Llama (see dualpath_vllm.model), built by the engines' venv."""
    return ensure_model_subprocess(default_model_dir())


def connector_config(agent_endpoint: str, engine_id: str, **extra: Any) -> dict[str, Any]:
    return kv_transfer_config(agent_endpoint, engine_id, **extra)
