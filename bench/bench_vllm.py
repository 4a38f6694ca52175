"""DualPath with real vLLM engines (CPU build, the tiny local Llama), side by side in one run.

1. Throughput: the vLLM demo (`dualpath demo --engines vllm`: 1 prefill + 2 decode nodes,
   each an agent with a storage-NIC read cap and a vLLM engine with the DualPathConnector,
   controller, router) plays the same multi-turn workload under prefill-only, paper and
   dualpath-split, back to back in one stack. Reported: turns/s per policy and the ratio
   to prefill-only (target >= 1.8x), TTFT, per-node storage reads and SNIC use; every turn
   is checked token for token against a reference engine that recomputes it. Default:
   16 agents x 3 turns (~1.2K-token prompts, ~57 MB of cached KV to read per policy) at
   1.0 MB/s per storage NIC, where prefill-only keeps the prefill node's SNIC ~93% busy
   (at 1.5 MB/s it was 85% and the CPUs began to share the bottleneck).
2. TTFT of one turn with a ~4K-token cached prefix (3,904 cached + 60 new tokens; the
   model's context is 4,096): an engine with the connector that loads the prefix PE_READ
   from its own agent (no SNIC cap) vs an engine without a connector that recomputes it.
   vLLM's prefix cache is off in both. Repetitions interleaved (the order alternates),
   each answer compared token for token between the two engines.
3. The connector's load vs the agent's raw load of the same blocks: the agent's own
   `dualpath_agent_load_seconds{path="pe_read"}` (from receiving the Load to the last
   layer written into the target and acknowledged; includes the O_DIRECT storage read and
   CRC checks, excludes the gRPC call and the engine noticing the notifications) for the
   load a real engine asked for during a turn, vs the same agent loading the same blocks
   into a plain NIXL-registered buffer laid out like vLLM's CPU KV cache (EngineKvCache)
   in this process, with nothing else running. `_transfer` figures subtract the agent's
   storage-read time (`dualpath_agent_storage_read_seconds`: read + CRC verify) from both.
4. Memory of each engine process (API server, engine core, model worker and
   multiprocessing's resource tracker): RSS and PSS from /proc, read while the engines
   are idle after section 2. The worker's figures include the KV cache it touched
   (EngineSpec.kv_cache_gib, 1 GiB, is reserved).

    python bench/bench_vllm.py                      # full run (~4.75 min on 2 cores)
    python bench/bench_vllm.py --quick --json out.json

Needs the engines' venv (`make engines-venv`, or DUALPATH_ENGINES_PYTHON).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for sub in ("agents", "common", "proto", "cli", "engines", "local"):
    sys.path.insert(0, str(REPO / sub))

import httpx  # noqa: E402
from bench_engine_transfer import EngineBuffers  # noqa: E402
from dualpath.v1 import agent_pb2  # noqa: E402
from dualpath_agent.blockhash import block_chain, root_hash  # noqa: E402
from dualpath_agent.client import block_ref, layout_msg  # noqa: E402
from dualpath_agent.launch import AgentHandle, start_agent  # noqa: E402
from dualpath_common.net import free_port  # noqa: E402
from dualpath_local.vllm_demo import (  # noqa: E402
    VllmDemoConfig,
    run_vllm_demo,
    stream_completion,
    token_ids,
)
from dualpath_vllm.config import kv_transfer_config  # noqa: E402
from dualpath_vllm.kv_cache import EngineKvCache  # noqa: E402
from dualpath_vllm.model import default_model_dir, ensure_model_subprocess  # noqa: E402
from dualpath_vllm.process import (  # noqa: E402
    EngineProcess,
    EngineSpec,
    group_pids,
    process_name,
    rss_bytes,
    start_engines,
    stop_engines,
)

BLOCK = 64  # vLLM block = store block
MiB = 2**20
NO_PREFIX_CACHE = ["--no-enable-prefix-caching"]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "runs": [round(v, 4) for v in values],
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
    }


# ----- 1. throughput ---------------------------------------------------------------------
def throughput(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    config = VllmDemoConfig(
        workdir=work / "demo",
        model_dir=model,
        policies=tuple(args.policies.split(",")),
        trajectories=args.trajectories,
        turns=args.turns,
        snic_read_bytes_per_s=args.snic_read_bytes_per_s,
        verify=True,
    )
    result = run_vllm_demo(config, log=lambda line: print(f"  {line}", flush=True))
    out = result.as_json()
    out["snic_read_bytes_per_s"] = args.snic_read_bytes_per_s
    out["speedup"] = {p.policy: p.speedup for p in result.phases[1:]}
    return out


# ----- 2-4. one connector engine vs one recomputing engine -------------------------------
def agent_histograms(agent: AgentHandle) -> dict[str, float]:
    """Sum and count of the agent's pe_read load histogram and its storage-read one."""
    text = httpx.get(f"http://{agent.metrics_address}/metrics", timeout=10).text
    out = {}
    for key, pattern in {
        "load_sum": r'^dualpath_agent_load_seconds_sum\{path="pe_read"\} (\S+)',
        "load_count": r'^dualpath_agent_load_seconds_count\{path="pe_read"\} (\S+)',
        "storage_sum": r"^dualpath_agent_storage_read_seconds_sum (\S+)",
        "storage_count": r"^dualpath_agent_storage_read_seconds_count (\S+)",
    }.items():
        match = re.search(pattern, text, re.MULTILINE)
        out[key] = float(match.group(1)) if match else 0.0
    return out


def one_load(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(load seconds, storage-read seconds) of the single load between two scrapes."""
    loads = after["load_count"] - before["load_count"]
    reads = after["storage_count"] - before["storage_count"]
    if loads != 1 or reads != 1:
        raise RuntimeError(f"expected one pe_read load between scrapes, saw {loads} ({reads})")
    return after["load_sum"] - before["load_sum"], after["storage_sum"] - before["storage_sum"]


def memory(engine: EngineProcess) -> list[dict[str, Any]]:
    rows = []
    for pid in group_pids(engine.pid):
        name = process_name(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        role = name
        if pid == engine.pid:
            role = "api_server"
        elif "EngineCor" in name:
            role = "engine_core"
        elif "Worker" in name:
            role = "worker"
        elif "resource_tracker" in cmdline:
            role = "resource_tracker"
        rows.append(
            {
                "pid": pid,
                "process": name,
                "role": role,
                "rss_mib": round(rss_bytes(pid) / MiB, 1),
                "pss_mib": round(pss_bytes(pid) / MiB, 1),
            }
        )
    return rows


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RawLoader:
    """Loads into a plain buffer laid out like vLLM's CPU KV cache, registered with NIXL
    in this process: the agent's raw load, without an engine."""

    def __init__(self, agent: AgentHandle, layers: int, engine_blocks: int) -> None:
        heads_x_dim = 64  # the tiny model: 2 KV heads x 32 dims (bf16)
        self.engine = EngineBuffers("cpu", layers, engine_blocks, BLOCK, 1, heads_x_dim)
        self.cache = EngineKvCache("bench-raw", self.engine.buffers, BLOCK, "DRAM")
        self.agent = agent
        self.client = agent.client()
        self.engine_blocks = engine_blocks

    def load(self, chain: list[Any], run: int) -> tuple[float, float, float]:
        """(seconds request -> last layer here, agent load s, agent storage-read s);
        sample blocks checked byte for byte against the store."""
        layout = self.cache.layout
        ids = [(run * 7 + 3 * k) % self.engine_blocks for k in range(len(chain))]
        target = self.cache.target(ids)
        self.cache.expect(target, len(chain), 0)
        request = agent_pb2.LoadRequest(
            request_id=f"raw-{run}",
            blocks=[block_ref(b) for b in chain],
            layout=layout_msg(layout),
            read_path=1,  # PE_READ
            engine_target=target.to_proto(),
        )
        before = agent_histograms(self.agent)
        started = time.perf_counter()
        list(self.client.stub.Load(request, timeout=120))
        for layer in range(layout.layers):
            self.cache.wait_layer(target.transfer_id, layer, 60.0, lambda: None)
        wall = time.perf_counter() - started
        self.cache.forget(target.transfer_id)
        load_s, storage_s = one_load(before, agent_histograms(self.agent))
        for k in (0, len(chain) - 1):
            for layer in (0, layout.layers - 1):
                want = self.client.read_block(chain[k].block_hash, layer=layer, layout=layout)
                if self.engine.layer_block(layer, ids[k]) != want:
                    raise RuntimeError(f"raw load: block {k} layer {layer} landed wrong")
        return wall, load_s, storage_s

    def close(self) -> None:
        self.cache.close()


def engine_rig(args: argparse.Namespace, model: Path, work: Path) -> dict[str, Any]:
    agent = start_agent("node", "prefill", work / "store", work / "agents", buffer_bytes="64MiB")
    engines: list[EngineProcess] = []
    raw: RawLoader | None = None
    try:
        specs = [
            EngineSpec(
                model,
                free_port(),
                engine_id="connector",
                kv_transfer_config=kv_transfer_config(agent.endpoint, "connector"),
                extra_args=NO_PREFIX_CACHE,
            ),
            EngineSpec(model, free_port(), engine_id="recompute", extra_args=NO_PREFIX_CACHE),
        ]
        (work / "engines").mkdir(parents=True, exist_ok=True)
        print("  starting the connector engine and the recomputing engine", flush=True)
        engines = start_engines(specs, log_dir=work / "engines")
        connector, recompute = engines
        prefix = token_ids(args.seed, "prefix", count=args.cached_tokens)
        chain = block_chain(prefix, BLOCK, parent=root_hash(str(model)))
        with httpx.Client(timeout=600) as http:
            # Turn 0: the connector engine computes the prefix and persists its blocks.
            stream_completion(http, connector.base_url, prefix, 1)
            with agent.client() as client:
                stored = client.lookup(chain)[0]
            if stored != len(chain):
                raise RuntimeError(f"{stored} of {len(chain)} prefix blocks stored")
            raw = RawLoader(agent, 4, max(256, 2 * len(chain)))
            rows: dict[str, list[float]] = {k: [] for k in ("conn", "rec", "raw_wall")}
            loads: dict[str, list[float]] = {k: [] for k in ("conn", "conn_st", "raw", "raw_st")}
            equal: list[bool] = []
            for rep in range(-1, args.reps):  # rep -1: warm-up, not timed
                prompt = prefix + token_ids(args.seed, "turn", rep, count=args.new_tokens)
                order = [connector, recompute] if rep % 2 == 0 else [recompute, connector]
                answers: dict[str, list[int]] = {}
                for engine in order:
                    before = agent_histograms(agent)
                    tokens, first, _ = stream_completion(
                        http, engine.base_url, prompt, args.output_tokens
                    )
                    answers[engine.spec.engine_id] = tokens
                    if engine is connector:
                        load_s, storage_s = one_load(before, agent_histograms(agent))
                        if rep >= 0:
                            rows["conn"].append(first)
                            loads["conn"].append(load_s)
                            loads["conn_st"].append(storage_s)
                    elif rep >= 0:
                        rows["rec"].append(first)
                wall, load_s, storage_s = raw.load(chain, rep + 1)
                if rep >= 0:
                    rows["raw_wall"].append(wall)
                    loads["raw"].append(load_s)
                    loads["raw_st"].append(storage_s)
                same = (
                    answers["connector"] == answers["recompute"]
                    and len(answers["connector"]) == args.output_tokens
                )
                equal.append(same)
                print(
                    f"  rep {rep}: TTFT connector {rows['conn'][-1:]} recompute "
                    f"{rows['rec'][-1:]}, tokens equal {same}",
                    flush=True,
                )
        load_bytes = len(chain) * 4 * BLOCK * 256
        conn_tr = [a - b for a, b in zip(loads["conn"], loads["conn_st"], strict=True)]
        raw_tr = [a - b for a, b in zip(loads["raw"], loads["raw_st"], strict=True)]
        ttft: dict[str, Any] = {
            "cached_tokens": len(chain) * BLOCK,
            "prompt_tokens": args.cached_tokens + args.new_tokens,
            "output_tokens": args.output_tokens,
            "connector_s": summary(rows["conn"]),
            "recompute_s": summary(rows["rec"]),
            "tokens_equal": all(equal),
            "comparisons": len(equal),
        }
        ttft["speedup"] = round(ttft["recompute_s"]["median"] / ttft["connector_s"]["median"], 3)
        load: dict[str, Any] = {
            "blocks": len(chain),
            "bytes": load_bytes,
            "connector_agent_load_s": summary(loads["conn"]),
            "raw_agent_load_s": summary(loads["raw"]),
            "raw_wall_s": summary(rows["raw_wall"]),
            "connector_agent_storage_s": summary(loads["conn_st"]),
            "raw_agent_storage_s": summary(loads["raw_st"]),
            "connector_transfer_s": summary(conn_tr),
            "raw_transfer_s": summary(raw_tr),
        }
        load["connector_vs_raw_load"] = round(
            load["connector_agent_load_s"]["median"] / load["raw_agent_load_s"]["median"], 3
        )
        load["connector_vs_raw_transfer"] = round(
            load["connector_transfer_s"]["median"] / load["raw_transfer_s"]["median"], 3
        )
        mem = {e.spec.engine_id: memory(e) for e in engines}
        return {"ttft": ttft, "load": load, "memory": mem}
    finally:
        if raw is not None:
            raw.close()
        stop_engines(engines)
        agent.stop()


# ----- report ------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    lines = []
    tp = results.get("throughput")
    if tp:
        lines.append(
            f"1. throughput, SNIC cap {tp['snic_read_bytes_per_s'] / 1e6:g} MB/s per node, "
            f"{tp['workload']['turns']:.0f} turns ({tp['workload']['mean_prompt_tokens']:.0f}"
            f"-token prompts), {tp['turns_verified']} turns verified, "
            f"{tp['mismatches']} mismatches"
        )
        lines.append(
            f"   {'policy':<16}{'turns/s':>9}{'x prefill-only':>16}{'TTFT p50':>10}  SNIC use"
        )
        for p in tp["phases"]:
            use = ", ".join(f"{n} {u:.0%}" for n, u in p["node_snic_utilisation"].items())
            lines.append(
                f"   {p['policy']:<16}{p['turns_per_s']:>9.3f}{p['speedup']:>15.2f}x"
                f"{p['ttft_p50_s']:>9.3f}s  {use}"
            )
    tt = results.get("ttft")
    if tt:
        lines.append(
            f"2. TTFT, {tt['cached_tokens']} cached of {tt['prompt_tokens']} prompt tokens "
            f"(median of {len(tt['connector_s']['runs'])}): connector (load) "
            f"{tt['connector_s']['median'] * 1e3:.1f} ms, recompute "
            f"{tt['recompute_s']['median'] * 1e3:.1f} ms -> {tt['speedup']:.2f}x; tokens equal "
            f"in {tt['comparisons']} comparisons: {tt['tokens_equal']}"
        )
    ld = results.get("load")
    if ld:
        ms = {k: v["median"] * 1e3 for k, v in ld.items() if isinstance(v, dict)}
        lines.append(
            f"3. load of {ld['blocks']} blocks ({ld['bytes'] / MiB:.2f} MiB), agent's "
            f"pe_read load time: in the engine {ms['connector_agent_load_s']:.1f} ms, raw "
            f"{ms['raw_agent_load_s']:.1f} ms -> {ld['connector_vs_raw_load']:.2f}x; without "
            f"the storage read {ms['connector_transfer_s']:.1f} vs {ms['raw_transfer_s']:.1f} "
            f"ms -> {ld['connector_vs_raw_transfer']:.2f}x; raw seen from this process "
            f"{ms['raw_wall_s']:.1f} ms"
        )
    mem = results.get("memory")
    if mem:
        lines.append("4. memory per engine process (MiB)")
        for engine, rows in mem.items():
            for r in rows:
                lines.append(
                    f"   {engine:<10} {r['role']:<20} pid {r['pid']:<7} RSS {r['rss_mib']:>7.1f}"
                    f"  PSS {r['pss_mib']:>7.1f}"
                )
            rss, pss = (sum(r[k] for r in rows) for k in ("rss_mib", "pss_mib"))
            lines.append(f"   {engine:<10} {'total':<20} {'':<11} RSS {rss:>7.1f}  PSS {pss:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (make bench)")
    parser.add_argument("--sections", default="throughput,engine")
    parser.add_argument("--policies", default="prefill-only,paper,dualpath-split")
    parser.add_argument("--snic-read-bytes-per-s", type=float, default=1.0e6)
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cached-tokens", type=int, default=61 * BLOCK)
    parser.add_argument("--new-tokens", type=int, default=60)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, help="stores and logs (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.trajectories, args.turns, args.reps = 4, 2, 2
        args.policies = "prefill-only,dualpath-split"
    sections = set(args.sections.split(","))
    started = time.monotonic()
    model = ensure_model_subprocess(default_model_dir())
    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-vllm-") as tmp:
        work = args.workdir or Path(tmp)
        if "throughput" in sections:
            print("1. throughput: the vLLM demo under each policy", flush=True)
            results["throughput"] = throughput(args, model, work)
        if "engine" in sections:
            print("2-4. TTFT, load and memory: connector engine vs recomputing engine", flush=True)
            results.update(engine_rig(args, model, work))
    results["wall_s"] = round(time.monotonic() - started, 1)
    print(table(results))
    print(f"wall {results['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
