"""`dualpath demo --engines vllm`: the main job on real vLLM engines.

A VllmStack (1 prefill + 2 decode nodes by default, each with its agent and a vLLM engine
loading KV through the DualPathConnector; the controller; `dualpath router`) serves the
scaled agentic trace as multi-turn clients, one thread per agent trajectory, through the
router's OpenAI API (streamed, token-id prompts, greedy). The same workload runs under each
policy, back to back; each phase has token ids of its own, so it creates its own blocks
rather than finding the previous phase's. Afterwards a reference engine with no connector
recomputes every turn: any token that differs fails the run.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from dualpath_agent.client import AgentClient

from dualpath_local.config import DEFAULT_POLICIES
from dualpath_local.stack import pid_alive
from dualpath_local.vllm_stack import KV_BYTES_PER_TOKEN, VllmStack, VllmStackConfig
from dualpath_local.workload import Turn, Workload, WorkloadConfig, build_workload, new_token_ids

# The tiny model's vocabulary is 1,024 ids; the first ten are its special tokens.
FIRST_ID, LAST_ID = 10, 1024


@dataclass(frozen=True)
class VllmDemoConfig:
    workdir: Path
    model_dir: Path
    policies: tuple[str, ...] = DEFAULT_POLICIES
    trajectories: int = 16
    turns: int = 3
    # The 32K trace at 1/16: ~1K-token prompts (the tiny model's context is 4,096).
    context_scale: float = 1 / 16
    snic_read_bytes_per_s: float = 1e6
    decode_nodes: int = 2
    seed: int = 7
    verify: bool = True
    json_path: Path | None = None


@dataclass
class TurnRecord:
    trajectory: int
    turn: int
    prompt: list[int]
    tokens: list[int]
    ttft_s: float
    latency_s: float
    read_path: str
    error: str = ""


@dataclass
class PhaseReport:
    policy: str
    turns: int
    failed: int
    wall_s: float
    turns_per_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    paths: dict[str, int]
    node_read_bytes: dict[str, int]
    node_snic_utilisation: dict[str, float]
    speedup: float = 0.0
    mismatches: int = 0
    # The failed turns' errors (at most 10), so a failure says what it was.
    errors: list[str] = field(default_factory=list)


@dataclass
class VllmDemoResult:
    phases: list[PhaseReport] = field(default_factory=list)
    workload: dict[str, float] = field(default_factory=dict)
    turns_verified: int = 0
    mismatches: int = 0
    memory_rss_mib: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    # Processes the stack started that were still alive after it was stopped (must be none).
    processes_left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.mismatches == 0
            and all(p.failed == 0 for p in self.phases)
            and not self.processes_left
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def token_ids(seed: int, tag: str, trajectory: int, turn: object, count: int) -> list[int]:
    """Ids of the tiny model's vocabulary (the same in every process and phase run)."""
    ids = new_token_ids(seed, trajectory, f"{tag}/{turn}", 0, count, FIRST_ID, LAST_ID)
    return [int(t) for t in ids]


class Conversation:
    """One trajectory's context as a phase plays it (prompts reuse the previous context,
    the answers come from the engines)."""

    def __init__(self, workload: Workload, index: int, seed: int, tag: str) -> None:
        self.plan = workload.trajectories[index]
        self.seed, self.tag = seed, tag
        self.context = token_ids(
            seed, tag, self.plan.index, "stored", count=self.plan.stored_prefix_tokens
        )

    def prompt(self, turn: Turn) -> list[int]:
        fresh = token_ids(
            self.seed, self.tag, self.plan.index, turn.index, count=turn.appended_tokens
        )
        return self.context[: turn.reused_tokens] + fresh

    def answered(self, prompt: list[int], tokens: list[int]) -> None:
        self.context = prompt + tokens


def stream_completion(
    client: httpx.Client, url: str, prompt: list[int], max_tokens: int
) -> tuple[list[int], float, str]:
    """(generated token ids, time to first token, read path) of one streamed completion."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    started = time.monotonic()
    ttft = 0.0
    tokens: list[int] = []
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"router answered {response.status_code}: {response.text[:300]}")
        path = response.headers.get("x-dualpath-read-path", "")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            ids = chunk["choices"][0].get("token_ids") or []
            if ids and not tokens:
                ttft = time.monotonic() - started
            tokens.extend(int(t) for t in ids)
    return tokens, ttft, path


class VllmDemo:
    def __init__(self, config: VllmDemoConfig, log: Any = print) -> None:
        self.config = config
        self.log = log
        self.workload = build_workload(
            WorkloadConfig(
                context_scale=config.context_scale,
                trajectories=config.trajectories,
                turns_per_trajectory=config.turns,
            )
        )
        self.stack = VllmStack(
            VllmStackConfig(
                workdir=config.workdir,
                model_dir=config.model_dir,
                decode_nodes=config.decode_nodes,
                snic_read_bytes_per_s=config.snic_read_bytes_per_s,
                reference=config.verify,
            )
        )
        self.records: dict[str, list[TurnRecord]] = {}

    def run(self) -> VllmDemoResult:
        started = time.monotonic()
        result = VllmDemoResult(workload=self.workload.summary())
        engines = self.config.decode_nodes + 1 + int(self.config.verify)
        self.log(
            f"starting agents, {engines} vLLM engines (about 20 s each on 2 cores, started "
            f"together), controller, router; logs in {self.config.workdir}"
        )
        self.stack.start(self.config.policies[0])
        self.log(f"stack up after {time.monotonic() - started:.0f} s: {self.stack.pids()}")
        for index, policy in enumerate(self.config.policies):
            if index:
                self.stack.restart_control_plane(policy)
            result.phases.append(self.run_phase(policy, tag=f"phase-{index}"))
        base = result.phases[0].turns_per_s
        for phase in result.phases:
            phase.speedup = round(phase.turns_per_s / base, 3) if base else 0.0
        result.memory_rss_mib = self.memory()
        if self.config.verify:
            self.verify(result)
        result.wall_s = round(time.monotonic() - started, 1)
        return result

    # ----- one phase --------------------------------------------------------------------
    def _warm(self, conversations: list[Conversation]) -> None:
        """What each trajectory stored before its played turns, computed and persisted by
        a decode engine on its own (not timed)."""
        engine = next(iter(e for n, e in self.stack.engines.items() if n.startswith("decode")))
        with httpx.Client(timeout=300) as client, ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda c: stream_completion(client, engine.base_url, c.context, 1),
                    conversations,
                )
            )

    def node_bytes(self) -> dict[str, int]:
        out = {}
        for node, agent in self.stack.agents.items():
            with AgentClient(agent.endpoint, identity=self.stack.client_identity()) as client:
                out[node] = client.stat().storage_bytes_read
        return out

    def run_phase(self, policy: str, tag: str) -> PhaseReport:
        conversations = [
            Conversation(self.workload, i, self.config.seed, tag)
            for i in range(len(self.workload.trajectories))
        ]
        self._warm(conversations)
        router = self.stack.router
        assert router is not None
        records: list[TurnRecord] = []
        lock = threading.Lock()
        done = [0]
        total = self.workload.turns_total

        def play(conv: Conversation) -> None:
            with httpx.Client(timeout=600) as client:
                for turn in conv.plan.turns:
                    prompt = conv.prompt(turn)
                    t0 = time.monotonic()
                    try:
                        tokens, ttft, path = stream_completion(
                            client, router.url, prompt, turn.output_tokens
                        )
                        error = ""
                    except Exception as exc:  # counted as a failed turn, the run goes on
                        tokens, ttft, path, error = [], 0.0, "", str(exc)
                    record = TurnRecord(
                        conv.plan.index,
                        turn.index,
                        prompt,
                        tokens,
                        ttft,
                        time.monotonic() - t0,
                        path,
                        error,
                    )
                    with lock:
                        records.append(record)
                        done[0] += 1
                    if error:
                        return
                    conv.answered(prompt, tokens)

        before = self.node_bytes()
        self.log(f"[{policy}] {total} turns of {len(conversations)} agents through the router")
        started = time.monotonic()
        with ThreadPoolExecutor(len(conversations)) as pool:
            futures = [pool.submit(play, c) for c in conversations]
            while not all(f.done() for f in futures):
                time.sleep(2.0)
                self.log(f"[{policy}] {done[0]}/{total} turns, {time.monotonic() - started:.0f} s")
        wall = time.monotonic() - started
        after = self.node_bytes()
        self.records[policy] = records
        ok = [r for r in records if not r.error]
        ttfts = sorted(r.ttft_s for r in ok) or [0.0]
        read = {n: after[n] - before[n] for n in after}
        paths: dict[str, int] = {}
        for r in ok:
            paths[r.read_path] = paths.get(r.read_path, 0) + 1
        report = PhaseReport(
            policy=policy,
            turns=len(ok),
            failed=len(records) - len(ok) + (total - len(records)),
            wall_s=round(wall, 2),
            turns_per_s=round(len(ok) / wall, 3),
            ttft_p50_s=round(statistics.median(ttfts), 3),
            ttft_p90_s=round(ttfts[int(0.9 * (len(ttfts) - 1))], 3),
            paths=paths,
            node_read_bytes=read,
            node_snic_utilisation={
                n: round(b / wall / self.config.snic_read_bytes_per_s, 3) for n, b in read.items()
            },
        )
        report.errors = [
            f"trajectory {r.trajectory} turn {r.turn}: {r.error}" for r in records if r.error
        ][:10]
        self.log(
            f"[{policy}] {report.turns_per_s} turns/s, TTFT p50 {report.ttft_p50_s}s, "
            f"reads {read}, failed {report.failed}"
            + (f" (first: {report.errors[0]})" if report.errors else "")
        )
        return report

    # ----- verification -----------------------------------------------------------------
    def verify(self, result: VllmDemoResult) -> None:
        """Every turn's tokens against the reference engine's recompute of its prompt."""
        reference = self.stack.reference
        assert reference is not None
        self.log("verifying every turn against a reference engine that recomputes it")

        def check(record: TurnRecord) -> bool:
            body = {
                "prompt": record.prompt,
                "max_tokens": len(record.tokens),
                "temperature": 0,
                "ignore_eos": True,
                "return_token_ids": True,
            }
            with httpx.Client(timeout=600) as client:
                answer = client.post(f"{reference.base_url}/v1/completions", json=body)
            answer.raise_for_status()
            return [int(t) for t in answer.json()["choices"][0]["token_ids"]] == record.tokens

        for phase in result.phases:
            records = [r for r in self.records[phase.policy] if not r.error and r.tokens]
            with ThreadPoolExecutor(4) as pool:
                same = list(pool.map(check, records))
            phase.mismatches = same.count(False)
            result.turns_verified += len(records)
            result.mismatches += phase.mismatches

    def memory(self) -> dict[str, float]:
        out = {}
        for node, engine in self.stack.engines.items():
            out[node] = round(sum(rss for _, rss in engine.memory().values()) / 2**20, 1)
        return out

    def close(self) -> None:
        self.stack.close()


def report_table(result: VllmDemoResult) -> str:
    lines = [
        f"{'policy':<16}{'turns/s':>9}{'speedup':>9}{'TTFT p50':>10}{'TTFT p90':>10}"
        f"{'failed':>8}{'mismatch':>10}  storage reads per node (MB) / SNIC use",
    ]
    for p in result.phases:
        nodes = ", ".join(
            f"{n} {b / 1e6:.1f}/{p.node_snic_utilisation[n]:.0%}"
            for n, b in p.node_read_bytes.items()
        )
        lines.append(
            f"{p.policy:<16}{p.turns_per_s:>9.2f}{p.speedup:>8.2f}x{p.ttft_p50_s:>9.3f}s"
            f"{p.ttft_p90_s:>9.3f}s{p.failed:>8}{p.mismatches:>10}  {nodes}"
        )
    lines.append(
        f"{result.turns_verified} turns verified token for token against a reference engine "
        f"that recomputes: {result.mismatches} mismatches. Engine RSS (MiB): "
        f"{result.memory_rss_mib}. Wall {result.wall_s} s."
    )
    return "\n".join(lines)


def run_vllm_demo(config: VllmDemoConfig, log: Any = print) -> VllmDemoResult:
    demo = VllmDemo(config, log)
    try:
        result = demo.run()
    finally:
        started = demo.stack.pids()
        demo.close()
    result.processes_left = [f"{name} ({pid})" for name, pid in started.items() if pid_alive(pid)]
    log(report_table(result))
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(result.as_json(), indent=2))
    return result


__all__ = ["KV_BYTES_PER_TOKEN", "VllmDemoConfig", "VllmDemoResult", "run_vllm_demo"]
