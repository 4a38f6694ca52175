"""Real vLLM engines for tests: the tiny local model, made once per machine by the
engines' venv (see dualpath_vllm.model)."""

from __future__ import annotations

from pathlib import Path

from dualpath_vllm.model import default_model_dir, ensure_model_subprocess


def tiny_model() -> Path:
    return ensure_model_subprocess(default_model_dir())
