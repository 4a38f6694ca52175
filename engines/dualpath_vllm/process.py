"""Run vLLM's OpenAI server as a child process on this machine (tests, demo, benchmarks).

The control plane's venv has no vLLM, so this module needs only the standard library and
httpx: the server runs under the engines' venv (`make engines-venv`). Each engine is one
process group (API server, engine core, model worker), logged to a file and stopped by its
pid.
Settings for vLLM's CPU backend: ../shared/notes/vllm-cpu.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from dualpath_vllm.model import MAX_POSITION_EMBEDDINGS

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run `make engines-venv` (hack/engines-venv.sh) to create it"


class EnginesVenvMissing(RuntimeError):
    pass


class EngineStartError(RuntimeError):
    pass


def engines_python() -> Path:
    """The engines' interpreter: $DUALPATH_ENGINES_PYTHON, else the python of
    $DUALPATH_ENGINES_VENV (default <repo>/.venv-engines)."""
    explicit = os.environ.get("DUALPATH_ENGINES_PYTHON")
    if explicit:
        python = Path(explicit)
        origin = "DUALPATH_ENGINES_PYTHON"
    else:
        venv = Path(os.environ.get("DUALPATH_ENGINES_VENV") or REPO / ".venv-engines")
        python = venv / "bin" / "python"
        origin = "the engines' venv"
    # Not resolved: a venv's python is a symlink, and the target would lose the venv.
    if not os.access(python, os.X_OK):
        raise EnginesVenvMissing(f"no Python with vLLM at {python} ({origin}): {INSTALL_HINT}")
    return python.absolute()


@dataclass
class EngineSpec:
    model_dir: Path
    port: int
    engine_id: str = "engine"
    host: str = "127.0.0.1"
    block_size: int = 64  # the CPU attention backend needs a multiple of 32
    # vLLM refuses more than the model's max_position_embeddings (4,096 for the tiny model).
    max_model_len: int = MAX_POSITION_EMBEDDINGS
    # The tiny model's KV is 1 KiB per token: 0.25 GiB holds 262K tokens, ample for the
    # demo and tests, and each engine's worker is ~770 MB smaller than with 1 GiB.
    kv_cache_gib: float = 0.25
    seed: int = 0
    # Several engines share a 2-core machine: one OpenMP thread each keeps them from
    # oversubscribing the cores (the model is tiny, more threads barely help).
    omp_threads: int = 1
    kv_transfer_config: dict[str, Any] | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self, python: Path | str) -> list[str]:
        # `python -m`: the `vllm` console script fails on this distribution (named vllm-cpu).
        args = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", "bfloat16",
            "--enforce-eager",
            "--block-size", str(self.block_size),
            "--max-model-len", str(self.max_model_len),
            # On CPU this is the share of host memory vLLM may claim: the default (0.92)
            # refuses to start beside other processes.
            "--gpu-memory-utilization", "0.1",
            # The KV cache's size, exactly (VLLM_CPU_KVCACHE_SPACE takes whole GiB only).
            "--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30)),
            "--seed", str(self.seed),
        ]  # fmt: skip
        if self.kv_transfer_config is not None:
            args += ["--kv-transfer-config", json.dumps(self.kv_transfer_config)]
        return args + list(self.extra_args)

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update(
            {
                # "auto" binds every engine's worker to the same cores, less one reserved
                # for its scheduler (two with a KV connector): on 2 cores, one core shared
                # by all engines, or none.
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": str(self.omp_threads),
                "TOKENIZERS_PARALLELISM": "false",
                # Never reach out: no usage reports, no model hub.
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env


class EngineProcess:
    """One vLLM server. `with EngineProcess(spec) as engine:` starts it and waits until it
    serves; leaving the block stops its whole process group."""

    def __init__(
        self, spec: EngineSpec, log_path: Path | None = None, python: Path | None = None
    ) -> None:
        self.spec = spec
        self.python = python
        self.log_path = log_path or _new_log_file(spec.engine_id)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"engine {self.spec.engine_id} was not started")
        return self.proc.pid

    def start(self) -> EngineProcess:
        python = self.python or engines_python()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.spec.argv(python),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.spec.environ(os.environ),
                start_new_session=True,  # its own process group: the engine core goes too
            )
        self.started_at = time.monotonic()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Poll /health until it answers 200; returns seconds since start. Fails at once,
        with the log's tail, if the server exits."""
        proc = self.proc
        if proc is None:
            raise RuntimeError(f"engine {self.spec.engine_id} was not started")
        deadline = self.started_at + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    raise EngineStartError(
                        f"engine {self.spec.engine_id} exited with {proc.returncode} before "
                        f"serving; log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineStartError(
                        f"engine {self.spec.engine_id} not serving after {timeout_s:.0f}s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        self.ready_after_s = time.monotonic() - self.started_at
        return self.ready_after_s

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the API server alone: it stops its engine core and worker itself
        (signalled together, they race and log a spurious EngineDeadError)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """`terminate`, then SIGKILL to whatever of the process group is left after
        `grace_s`; returns the API server's exit code."""
        if self.proc is None:
            return None
        group = self.proc.pid
        self.terminate()
        deadline = time.monotonic() + grace_s
        while group_pids(group) and time.monotonic() < deadline:
            if self.proc.poll() is not None:  # (poll also reaps it: no zombie left)
                # The API server is gone: what remains has lost its parent.
                deadline = min(deadline, time.monotonic() + 2.0)
            time.sleep(0.1)
        if group_pids(group):
            _kill_group(group)
        return self.proc.wait()

    def memory(self) -> dict[int, tuple[str, int]]:
        """Name and RSS in bytes of each process of the engine, by pid."""
        if self.proc is None:
            return {}
        return {pid: (process_name(pid), rss_bytes(pid)) for pid in group_pids(self.proc.pid)}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EngineProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_engines(
    specs: Iterable[EngineSpec], log_dir: Path | None = None, timeout_s: float = 240.0
) -> list[EngineProcess]:
    """Start all engines at once and wait until every one serves; on any failure, stop
    them all and raise."""
    engines = [
        EngineProcess(spec, log_dir / f"{spec.engine_id}.log" if log_dir else None)
        for spec in specs
    ]
    try:
        for engine in engines:
            engine.start()
        for engine in engines:
            engine.wait_ready(timeout_s)
    except BaseException:
        stop_engines(engines)
        raise
    return engines


def stop_engines(engines: Iterable[EngineProcess]) -> None:
    engines = list(engines)
    for engine in engines:  # all signalled first: they shut down side by side
        engine.terminate()
    for engine in engines:
        engine.stop()


def _new_log_file(engine_id: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f"dualpath-{engine_id}-", suffix=".log")
    os.close(fd)
    return Path(path)


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def _stat_fields(pid: int) -> list[str]:
    # Fields after "pid (comm)": state is [0], pgrp is [2].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_pids(group: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
