"""The connector's transfer layer against raw NIXL, side by side in one run: cached blocks
loaded by real agents straight into an engine's KV cache laid out like vLLM's (the
EngineKvCache the DualPathConnector registers), on each read path, vs one bare NIXL WRITE
of the same bytes into the same engine blocks from a second process.

    python bench/bench_engine_transfer.py --device cpu            # vLLM CPU layout, DRAM
    python bench/bench_engine_transfer.py --device cuda --json gpu.json   # VRAM (a GPU)

On CUDA the KV cache is FlashAttention's layout, (2, num_blocks, block_size, kv_heads,
head_dim) bf16 per layer, registered as VRAM; on CPU vLLM's CPU layout (num_blocks, 2,
block_size, kv_heads * head_dim), registered as DRAM. Each load is timed from the request
to the last layer's notification at the engine; the agent's storage read (O_DIRECT, its
share of the time) is reported apart, so "transfer" compares like with like against raw.
Every run checks sample blocks byte for byte where they landed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for sub in ("agents", "common", "proto", "cli", "engines"):
    sys.path.insert(0, str(REPO / sub))

import numpy as np  # noqa: E402
from dualpath.v1 import agent_pb2  # noqa: E402
from dualpath_agent import kvgen  # noqa: E402
from dualpath_agent.blockhash import block_chain, root_hash  # noqa: E402
from dualpath_agent.client import block_ref, layout_msg  # noqa: E402
from dualpath_agent.launch import start_agent  # noqa: E402
from dualpath_vllm.kv_cache import EngineKvCache, LayerBuffer, describe_layer  # noqa: E402

PATHS = {"PE_READ": (1, 0.0), "DE_READ": (2, 0.0), "SPLIT": (3, 0.5)}


class EngineBuffers:
    """KV-cache tensors of an engine, on the CPU (numpy) or a GPU (torch)."""

    def __init__(
        self, device: str, layers: int, blocks: int, block_tokens: int, heads: int, dim: int
    ):
        self.device = device
        if device == "cuda":
            import torch

            self.tensors: list[Any] = [
                torch.zeros(
                    (2, blocks, block_tokens, heads, dim), dtype=torch.bfloat16, device="cuda"
                )
                for _ in range(layers)
            ]
            self.buffers = [
                describe_layer(
                    tuple(t.shape), tuple(t.stride()), t.element_size(), t.data_ptr(), blocks
                )
                for t in self.tensors
            ]
            self.mem_type = "VRAM"
        else:
            self.tensors = [
                np.zeros((blocks, 2, block_tokens, heads * dim), dtype=np.uint16)
                for _ in range(layers)
            ]
            self.buffers = [
                describe_layer(
                    t.shape, [s // t.itemsize for s in t.strides], t.itemsize, t.ctypes.data, blocks
                )
                for t in self.tensors
            ]
            self.mem_type = "DRAM"

    def layer_block(self, layer: int, block_id: int) -> bytes:
        t = self.tensors[layer]
        if self.device == "cuda":
            import torch

            k, v = t[0, block_id].contiguous(), t[1, block_id].contiguous()
            return b"".join(bytes(x.cpu().view(-1).view(torch.uint8).numpy()) for x in (k, v))
        return t[block_id].tobytes()


def raw_nixl_writer(conn: Any, layer_buffers: list[LayerBuffer], nbytes_per_block: int) -> None:
    """Second process: one NIXL agent with a host buffer holding the blocks; WRITEs them
    into the engine blocks it is told, all layers in one transfer, and reports the time."""
    from dualpath_agent.engine_target import parse_engine_target
    from dualpath_agent.layout import BlockLayout
    from dualpath_agent.transport import NixlRuntime

    runtime = NixlRuntime("raw-writer", backends=("UCX",))
    agent = runtime.agent
    target_bytes, layout_t, blocks = conn.recv()
    layout = BlockLayout(*layout_t)
    target = parse_engine_target(agent_pb2.EngineKvTarget.FromString(target_bytes), layout, blocks)
    host = np.ones(blocks * nbytes_per_block, dtype=np.uint8)
    agent.register_memory([(host.ctypes.data, host.nbytes, 0, "")], "DRAM")
    peer = agent.add_remote_agent(target.agent_metadata)
    layer_bytes = layout.block_tokens * layout.bytes_per_token_layer
    rows = target.write_rows(
        [host.ctypes.data + k * nbytes_per_block for k in range(blocks)], [layer_bytes] * blocks
    ).reshape(-1, 3)
    dev = np.zeros(len(rows), dtype=np.uint64)
    local = agent.get_xfer_descs(np.column_stack((rows[:, 0], rows[:, 2], dev)), "DRAM")
    remote = agent.get_xfer_descs(np.column_stack((rows[:, 1], rows[:, 2], dev)), target.mem_type)
    times = []
    for _ in range(conn.recv()):
        handle = agent.initialize_xfer("WRITE", local, remote, peer, b"raw")
        started = time.perf_counter()
        agent.transfer(handle)
        while agent.check_xfer_state(handle) == "PROC":
            pass
        times.append(time.perf_counter() - started)
        handle.release()
    conn.send(times)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=64, help="blocks per load")
    parser.add_argument("--engine-blocks", type=int, default=256)
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)

    engine = EngineBuffers(
        args.device,
        args.layers,
        args.engine_blocks,
        args.block_tokens,
        args.kv_heads,
        args.head_dim,
    )
    cache = EngineKvCache("bench-engine", engine.buffers, args.block_tokens, engine.mem_type)
    layout = cache.layout
    block_bytes = layout.layers * layout.block_tokens * layout.bytes_per_token_layer
    load_bytes = args.blocks * block_bytes
    print(
        f"engine KV cache: {args.layers} layers, {engine.mem_type}, Layer Block "
        f"{cache.layer_block_bytes // 1024} KiB, {cache.planes} plane(s); a load is "
        f"{args.blocks} blocks = {load_bytes / 2**20:.0f} MiB",
        flush=True,
    )
    results: dict[str, Any] = {"device": args.device, "load_bytes": load_bytes, "paths": {}}
    with tempfile.TemporaryDirectory(prefix="dualpath-bench-") as tmp:
        work = Path(tmp)
        buffer = f"{max(256, 2 * load_bytes >> 20)}MiB"
        agents = [
            start_agent("pe", "prefill", work / "store", work, buffer_bytes=buffer),
            start_agent("de", "decode", work / "store", work, buffer_bytes=buffer),
        ]
        try:
            pe, de = agents[0].client(), agents[1].client()
            rng = np.random.default_rng(0)
            chain = block_chain(
                rng.integers(0, 50_000, args.blocks * args.block_tokens),
                args.block_tokens,
                parent=root_hash("bench"),
            )
            de.seed_synthetic(chain, layout)
            for name, (path, fraction) in PATHS.items():
                totals, transfers = [], []
                for run in range(args.runs):
                    ids = [int(i) for i in rng.permutation(args.engine_blocks)[: args.blocks]]
                    target = cache.target(ids)
                    n_remote = {1: 0, 2: args.blocks}.get(path, round(fraction * args.blocks))
                    cache.expect(target, args.blocks - n_remote, n_remote)
                    request = agent_pb2.LoadRequest(
                        request_id=f"{name}-{run}",
                        blocks=[block_ref(b) for b in chain],
                        layout=layout_msg(layout),
                        read_path=path,
                        de_read_fraction=fraction,
                        decode_agent_endpoint=agents[1].endpoint if n_remote else "",
                        engine_target=target.to_proto(),
                    )
                    started = time.perf_counter()
                    final = list(pe.stub.Load(request, timeout=120))[-1]
                    for layer in range(layout.layers):
                        cache.wait_layer(target.transfer_id, layer, 60.0, lambda: None)
                    total = time.perf_counter() - started
                    cache.forget(target.transfer_id)
                    storage = max(final.local_storage_read_s, final.remote_storage_read_s)
                    totals.append(total)
                    transfers.append(max(total - storage, 1e-9))
                    for k in (0, args.blocks - 1):
                        for layer in (0, layout.layers - 1):
                            want = kvgen.layer_bytes(
                                chain[k].block_hash,
                                layer,
                                args.block_tokens,
                                layout.bytes_per_token_layer,
                            )
                            if engine.layer_block(layer, ids[k]) != want:
                                raise SystemExit(f"{name}: block {k} layer {layer} landed wrong")
                results["paths"][name] = {
                    "load_gbps_median": round(gbps(load_bytes, statistics.median(totals)), 3),
                    "transfer_gbps_median": round(
                        gbps(load_bytes, statistics.median(transfers)), 3
                    ),
                    "load_s": [round(t, 4) for t in totals],
                }
                print(name, results["paths"][name], flush=True)
        finally:
            for a in agents:
                a.stop()
        # Raw NIXL: the same bytes into the same kind of engine blocks, one WRITE.
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        writer = ctx.Process(target=raw_nixl_writer, args=(child, engine.buffers, block_bytes))
        writer.start()
        ids = list(range(args.blocks))
        target = cache.target(ids)
        parent.send(
            (
                target.to_proto().SerializeToString(),
                (layout.layers, layout.block_tokens, layout.bytes_per_token_layer),
                args.blocks,
            )
        )
        parent.send(args.runs)
        raw = parent.recv()
        writer.join(30)
        results["raw_nixl"] = {
            "gbps_median": round(gbps(load_bytes, statistics.median(raw)), 3),
            "write_s": [round(t, 4) for t in raw],
        }
        print("raw NIXL WRITE", results["raw_nixl"], flush=True)
        for r in results["paths"].values():
            r["transfer_vs_raw"] = round(
                r["transfer_gbps_median"] / results["raw_nixl"]["gbps_median"], 3
            )
        print(json.dumps(results, indent=2))
    cache.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
