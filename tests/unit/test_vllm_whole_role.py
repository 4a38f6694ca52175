"""The connector's scheduler side for a request served whole by one engine (the endpoint
picker's requests: kv_transfer_params.dualpath.role = "whole"): it loads by the
controller's read path like a prefill, but persists through its own agent (no decode engine
takes its blocks over) and is not a hand-off.

The scheduler side imports vLLM, which lives in the engines' venv: the checks run there as
a child process (this file run as a script); the round trip of the params runs here."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpath_vllm.params import DualPathParams, ReadPathName, Role

REPO = Path(__file__).resolve().parents[2]

BLOCK = 4
OWN_AGENT = "127.0.0.1:1"  # never dialled: lookup is replaced below
DECODE_AGENT = "10.0.0.2:7000"


@dataclass
class FakeBlocks:
    ids: list[int]

    def get_block_ids(self) -> tuple[list[int]]:
        return (self.ids,)


@dataclass
class FakeRequest:
    request_id: str
    prompt_token_ids: list[int]
    kv_transfer_params: dict[str, Any] | None
    cache_salt: str | None = None
    all_token_ids: list[int] = field(default_factory=list)


def new_scheduler() -> Any:
    from dualpath_vllm.config import ConnectorConfig
    from dualpath_vllm.scheduler import DualPathScheduler

    sched = DualPathScheduler(
        ConnectorConfig(agent_endpoint=OWN_AGENT, hash_namespace="ns", insecure=True), BLOCK
    )
    sched.agent.lookup = lambda chain: (len(chain), None)
    return sched


def plan_load(params: DualPathParams) -> tuple[Any, Any]:
    sched = new_scheduler()
    try:
        request = FakeRequest("r1", list(range(13)), params.to_body())
        tokens, _ = sched.get_num_new_matched_tokens(request, 0)
        assert tokens == 12, tokens  # 3 full blocks of the 12 tokens before the last one
        sched.update_state_after_alloc(request, FakeBlocks([7, 8, 9, 10]), tokens)
        (job,) = sched._loads
        return job, sched._tracked["r1"]
    finally:
        sched.close()


def params(role: Role, path: ReadPathName) -> DualPathParams:
    return DualPathParams(
        request_id="r1",
        role=role,
        read_path=path,
        de_read_fraction=0.5 if path is ReadPathName.SPLIT else 0.0,
        decode_agent_endpoint=DECODE_AGENT,
        prefill_agent_endpoint=OWN_AGENT,
    )


def check_scheduler_side() -> None:
    """Run in the engines' venv (vLLM importable)."""
    for path in ReadPathName:
        job, tracked = plan_load(params(Role.WHOLE, path))
        assert job.read_path is path, (path, job.read_path)
        assert job.decode_agent_endpoint == DECODE_AGENT
        assert job.de_read_fraction == (0.5 if path is ReadPathName.SPLIT else 0.0)
        assert job.handoff is False
        assert job.block_ids == [7, 8, 9]
        assert tracked.save_endpoint == OWN_AGENT, tracked.save_endpoint
    # The prefill of a P/D pair hands its blocks to the decode agent instead.
    _, tracked = plan_load(params(Role.PREFILL, ReadPathName.DE_READ))
    assert tracked.save_endpoint == DECODE_AGENT
    # The decode of a pair reads what was handed over from its own agent.
    job, _ = plan_load(params(Role.DECODE, ReadPathName.PE_READ))
    assert job.handoff is True and job.decode_agent_endpoint == ""


def test_whole_loads_by_the_read_path_and_saves_through_its_own_agent():
    from dualpath_vllm.process import engines_python

    python = engines_python()  # EnginesVenvMissing names `make engines-venv`
    # The engines' venv has the project installed: nothing of this venv's path goes along.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), __file__], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "whole-role checks passed" in done.stdout


def test_whole_round_trips_through_the_body():
    p = params(Role.WHOLE, ReadPathName.DE_READ)
    assert p.to_body()["dualpath"]["role"] == "whole"
    assert DualPathParams.from_body(p.to_body()) == p


if __name__ == "__main__":
    check_scheduler_side()
    print("whole-role checks passed")
