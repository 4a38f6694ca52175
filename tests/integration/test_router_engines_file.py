"""`dualpath router --engines-file` follows its file while serving: a real router process
with no `--engine`, a real controller process, real agents, recording engine doubles. The
file is replaced the way the kubelet updates a mounted ConfigMap (a new file renamed over
the old). Engines added are registered and served; engines removed are deregistered at the
controller at once and get no new request; a file that does not validate changes nothing
and is counted."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dualpath_agent.launch import AgentHandle, start_agent
from dualpath_controller.client import ControllerClient
from dualpath_controller.process import ControllerProcess
from dualpath_router.process import RouterProcess

from tests.support.metrics import sample_value
from tests.support.recording_engine import RecordingEngine
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(180)


def entry(engine: RecordingEngine, role: str, agent: AgentHandle) -> dict[str, Any]:
    return {
        "id": engine.engine_id,
        "role": role,
        "url": engine.url,
        "node": f"node-{engine.engine_id}",
        "agent": agent.endpoint,
    }


def replace(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentHandle]:
    work = tmp_path_factory.mktemp("router-engines-file")
    handle = start_agent("node-a", "prefill", work / "store", work)
    try:
        yield handle
    finally:
        handle.stop()


def test_the_router_follows_its_engines_file(tmp_path: Path, agent: AgentHandle) -> None:
    engines_file = tmp_path / "engines.json"
    with (
        RecordingEngine("prefill-0") as p0,
        RecordingEngine("decode-0") as d0,
        RecordingEngine("decode-1") as d1,
        ControllerProcess(report_interval_ms=100) as controller,
    ):
        replace(engines_file, "")  # the operator has not listed any engine yet
        with RouterProcess(
            controller=controller.target,
            engines=[],
            hash_namespace="tiny",
            extra_args=["--engines-file", str(engines_file)],
        ) as router:

            def registered() -> set[str]:
                with ControllerClient(controller.target) as client:
                    return {e.engine.engine_id for e in client.status().engines}

            def healthz() -> dict[str, Any]:
                reply = httpx.get(f"{router.url}/healthz")
                return {"code": reply.status_code, **reply.json()}

            def ask() -> httpx.Response:
                body = {"model": "tiny", "prompt": [5] * 70, "max_tokens": 3}
                return httpx.post(f"{router.url}/v1/completions", json=body, timeout=30)

            def router_metric(name: str, labels: dict[str, str]) -> float:
                return sample_value(httpx.get(f"{router.url}/metrics").text, name, labels)

            def reloads(outcome: str) -> float:
                name = "dualpath_router_engines_file_reloads_total"
                return router_metric(name, {"outcome": outcome})

            def alive() -> None:
                assert router.proc is not None and router.proc.poll() is None, "router exited"

            # No engine yet: not ready, requests refused with 503, the prefix lookup that had
            # no agent to ask counted.
            wait_for("the router serving /healthz", lambda: "problems" in healthz(), 30, alive)
            assert healthz()["code"] == 503 and "no prefill engine is up" in healthz()["problems"]
            assert ask().status_code == 503
            name = "dualpath_router_prefix_lookup_failures_total"
            assert router_metric(name, {"agent": "none", "code": "NO_AGENT"}) == 1

            replace(
                engines_file, json.dumps([entry(p0, "prefill", agent), entry(d0, "decode", agent)])
            )
            wait_for("the file's engines in service", lambda: healthz()["code"] == 200, 30, alive)
            assert registered() == {"prefill-0", "decode-0"}
            assert ask().status_code == 200 and len(d0.completions()) == 1

            # decode-0 leaves while it streams an answer, decode-1 comes: the answer in flight
            # completes, decode-0 is deregistered, decode-1 registered and served.
            d0.knobs.chunk_delay_s = 0.5  # 16 chunks: ~8 s, over the file's 2 s poll
            streamed: list[bytes] = []
            body = {"model": "tiny", "prompt": [6] * 70, "max_tokens": 16, "stream": True}
            in_flight = threading.Thread(
                target=lambda: streamed.append(
                    httpx.post(f"{router.url}/v1/completions", json=body, timeout=60).content
                )
            )
            in_flight.start()
            wait_for("decode-0 streaming", lambda: len(d0.completions()) == 2, 15, alive)
            replace(
                engines_file, json.dumps([entry(p0, "prefill", agent), entry(d1, "decode", agent)])
            )
            wait_for("decode-0 deregistered", lambda: "decode-0" not in registered(), 30, alive)
            assert in_flight.is_alive(), "the answer ended before decode-0 was let go"
            wait_for(
                "decode-0 let go and decode-1 in service",
                lambda: (
                    registered() == {"prefill-0", "decode-1"}
                    and healthz()["code"] == 200
                    and set(healthz()["engines"]) == {"prefill-0", "decode-1"}
                ),
                30,
                alive,
            )
            in_flight.join(60)
            assert streamed and streamed[0].endswith(b"data: [DONE]\n\n"), streamed
            assert streamed[0] == d0.completions()[1].sent
            assert ask().status_code == 200
            assert len(d1.completions()) == 1 and len(d0.completions()) == 2

            # A file that does not validate changes nothing, names the field, and is counted.
            replace(engines_file, json.dumps([{"id": "decode-2", "role": "decode"}]))
            wait_for("the bad file counted", lambda: reloads("invalid") == 1, 30, alive)
            assert registered() == {"prefill-0", "decode-1"}
            assert ask().status_code == 200 and len(d1.completions()) == 2
            log = router.log_path.read_text()
            assert "engines file not applied" in log and "[0]: url: Field required" in log
            shown = healthz()["engines_file"]
            assert not shown["applied"] and "[0]: url: Field required" in shown["problem"]

            # decode-1 leaves while a request it was chosen for is still in its prefill: the
            # request still reaches decode-1 and is answered.
            p0.knobs.chunk_delay_s = 4.0  # the prefill's JSON answer comes after 4 s
            answers: list[httpx.Response] = []
            in_prefill = threading.Thread(target=lambda: answers.append(ask()))
            in_prefill.start()
            wait_for("the prefill sent", lambda: len(p0.completions()) == 5, 15, alive)
            replace(
                engines_file, json.dumps([entry(p0, "prefill", agent), entry(d0, "decode", agent)])
            )
            wait_for("decode-1 deregistered", lambda: "decode-1" not in registered(), 30, alive)
            assert healthz()["engines_file"]["applied"]
            assert in_prefill.is_alive(), "the prefill ended before decode-1 was let go"
            in_prefill.join(60)
            assert answers and answers[0].status_code == 200, answers and answers[0].text
            assert len(d1.completions()) == 3
