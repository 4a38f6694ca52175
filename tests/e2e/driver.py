"""Traffic driver of the e2e flow, run *inside* the cluster: the suite mounts this file
from a ConfigMap into a pod of the DualPath image and reads the `RESULT {json}` line it
prints. Only pod networking is used (the controller's Service name, the agents' endpoints
as the controller hands them out), so the suite works the same on any cluster.

Commands:
  engines   wait until engines of both roles are registered and live; list them
  de-read   schedule two requests on the paper policy and move the second one's KV on the
            DE-read path: the first (PE_READ on an idle cluster) books the prefill node's
            storage read queue, so the second is sent to the decode side; real random KV
            bytes are stored on the decode node's agent, loaded by the prefill node's agent
            through the decode agent, and compared byte for byte (SHA-256) with what was
            stored.
  chat      through the router's Service: one OpenAI chat completion, then two greedy
            completion turns of token-id prompts (the second extends the first and its
            answer, so its prefix is loaded from the KV store); the router's and the decode
            node agent's metrics before and after, to show which read path served it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from typing import Any


def identity(args: argparse.Namespace) -> Any:
    """The driver acts as an engine: Schedule, PutBlocks and Load need that role."""
    from dualpath_common import tls

    return tls.load_identity(args.tls_dir)


def result(payload: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(payload, sort_keys=True), flush=True)


def engines(args: argparse.Namespace) -> int:
    from dualpath_controller.client import ControllerClient

    deadline = time.monotonic() + args.timeout
    last: dict[str, Any] = {}
    with ControllerClient(args.controller, identity=identity(args)) as ctl:
        while time.monotonic() < deadline:
            try:
                status = ctl.status()
                live = [e for e in status.engines if not e.drained]
                last = {
                    "policy": status.policy,
                    "engines": [
                        {
                            "id": e.engine.engine_id,
                            "role": int(e.engine.role),
                            "node": e.engine.node,
                            "agent": e.engine.agent_endpoint,
                            "drained": e.drained,
                        }
                        for e in status.engines
                    ],
                }
                nodes = {e.engine.node for e in live}
                if len(nodes) >= 2 and all(e.engine.agent_endpoint for e in live):
                    result(last)
                    return 0
            except Exception as exc:  # the controller may still be starting
                last["error"] = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
    result({**last, "timeout": True})
    return 1


def schedule(ctl: Any, request_id: str, cached_tokens: int, kv_bytes_per_token: int) -> Any:
    response = ctl.schedule(
        request_id,
        total_tokens=cached_tokens + 64,
        cached_tokens=cached_tokens,
        append_tokens=64,
        expected_output_tokens=16,
        kv_bytes_per_token=kv_bytes_per_token,
        wait_for_capacity_s=30,
    )
    return response.assignment


def assignment_json(a: Any) -> dict[str, Any]:
    from dualpath.v1 import traffic_controller_pb2 as pb

    return {
        "read_path": pb.ReadPath.Name(a.read_path),
        "reason": a.reason,
        "policy": a.policy,
        "prefill_node": a.prefill_node,
        "decode_node": a.decode_node,
        "prefill_agent": a.prefill_agent_endpoint,
        "decode_agent": a.decode_agent_endpoint,
        "de_read_bytes": a.de_read_bytes,
        "pe_read_bytes": a.pe_read_bytes,
    }


def dense_blocks(count: int, layout: Any) -> list[bytes]:
    """Random KV bytes, one dense [layers, tokens, bytes] Full Block each."""
    return [os.urandom(layout.block_bytes(layout.block_tokens)) for _ in range(count)]


def layer_major(blocks: list[bytes], layout: Any) -> bytes:
    """What a loaded region must hold: for each layer, that layer of every block in order."""
    per_layer = layout.layer_bytes(layout.block_tokens)
    return b"".join(
        block[i * per_layer : (i + 1) * per_layer] for i in range(layout.layers) for block in blocks
    )


def de_read(args: argparse.Namespace) -> int:
    from dualpath.v1 import traffic_controller_pb2 as pb
    from dualpath_agent.blockhash import block_chain
    from dualpath_agent.client import AgentClient, ReadPath
    from dualpath_agent.layout import BlockLayout
    from dualpath_controller.client import ControllerClient

    layout = BlockLayout(args.layers, args.block_tokens, args.bytes_per_token_layer)
    cached_tokens = args.blocks * args.block_tokens
    kv_bytes_per_token = args.layers * args.bytes_per_token_layer
    run = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {"layout": vars(args) | {"func": None}}
    with ControllerClient(args.controller, identity=identity(args)) as ctl:
        first = schedule(ctl, f"e2e-{run}-a", cached_tokens, kv_bytes_per_token)
        second = schedule(ctl, f"e2e-{run}-b", cached_tokens, kv_bytes_per_token)
        out["first"], out["second"] = assignment_json(first), assignment_json(second)
        if second.read_path != pb.ReadPath.READ_PATH_DE_READ:
            result({**out, "error": "second request was not scheduled on the DE-read path"})
            return 1
        token_ids = [
            int.from_bytes(os.urandom(4), "little") % 100_000 for _ in range(cached_tokens)
        ]
        chain = block_chain(token_ids, args.block_tokens)
        data = dense_blocks(len(chain), layout)
        with (
            AgentClient(second.decode_agent_endpoint, identity=identity(args)) as de,
            AgentClient(second.prefill_agent_endpoint, identity=identity(args)) as pe,
        ):
            put = de.put_blocks(zip(chain, data, strict=True), layout)
            out["stored"] = {"written": put.blocks_written, "present": put.blocks_already_present}
            de_before, pe_before = de.stat(), pe.stat()
            t0 = time.monotonic()
            loaded = pe.load(
                second.request_id,
                chain,
                layout,
                ReadPath.DE_READ,
                decode_endpoint=second.decode_agent_endpoint,
                release_after_load=False,
            )
            elapsed = time.monotonic() - t0
            region = pe.read_region(second.request_id)
            pe.release(second.request_id)
            de_after, pe_after = de.stat(), pe.stat()
        expected = layer_major(data, layout)
        out["load"] = {
            "read_path": ReadPath(loaded.read_path).name,
            "bytes_total": loaded.bytes_total,
            "bytes_from_peer": loaded.bytes_from_peer,
            "bytes_from_local_storage": loaded.bytes_from_local_storage,
            "blocks_verified": loaded.blocks_verified,
            "blocks_remote": loaded.blocks_remote,
            "layers_seen": loaded.layers_seen,
            "elapsed_s": elapsed,
        }
        out["region"] = {
            "bytes": len(region),
            "sha256": hashlib.sha256(region).hexdigest(),
            "expected_bytes": len(expected),
            "expected_sha256": hashlib.sha256(expected).hexdigest(),
        }
        out["decode_agent"] = {
            "node": de_after.node,
            "role": de_after.role,
            "peer_transport": de_after.peer_transport,
            "storage_bytes_read": de_after.storage_bytes_read - de_before.storage_bytes_read,
        }
        out["prefill_agent"] = {
            "node": pe_after.node,
            "role": pe_after.role,
            "peer_transport": pe_after.peer_transport,
            "storage_bytes_read": pe_after.storage_bytes_read - pe_before.storage_bytes_read,
        }
        for a in (first, second):
            ctl.complete(a.request_id, missing_ok=True)
    result(out)
    return 0


def metric_sums(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each Prometheus sample line of `names` (name{labels} -> value) at `url`."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(names):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def chat(args: argparse.Namespace) -> int:
    import httpx
    from dualpath_vllm.reference import greedy_completion

    router = args.router.rstrip("/")
    deadline = time.monotonic() + args.timeout
    while True:  # the Service answers once the router sees both roles' engines
        try:
            if httpx.get(f"{router}/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            result({"error": f"router {router} not healthy after {args.timeout}s"})
            return 1
        time.sleep(1)
    router_names = ("dualpath_router_requests_total", "dualpath_router_cached_tokens_total")
    agent_names = ("dualpath_agent_bytes_total",)
    out: dict[str, Any] = {}
    answer = httpx.post(
        f"{router}/v1/chat/completions",
        json={
            "model": args.model,
            "messages": [{"role": "user", "content": "Say something about storage bandwidth."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=120,
    )
    out["chat"] = {"status": answer.status_code, "body": answer.json()}
    prompt = [int(t) for t in json.loads(args.prompt)]
    extra = [int(t) for t in json.loads(args.extra)]
    first = greedy_completion(router, prompt, args.max_tokens, extra_body={"model": args.model})
    out["turn1"] = {"prompt": prompt, "tokens": first.token_ids}
    router_before = metric_sums(f"{router}/metrics", router_names)
    agent_before = metric_sums(args.decode_agent_metrics, agent_names)
    turn2 = prompt + first.token_ids + extra
    second = greedy_completion(router, turn2, args.max_tokens, extra_body={"model": args.model})
    out["turn2"] = {"prompt": turn2, "tokens": second.token_ids}
    router_after = metric_sums(f"{router}/metrics", router_names)
    agent_after = metric_sums(args.decode_agent_metrics, agent_names)
    out["router_delta"] = {
        k: v - router_before.get(k, 0.0)
        for k, v in router_after.items()
        if v != router_before.get(k)
    }
    out["decode_agent_delta"] = {
        k: v - agent_before.get(k, 0.0) for k, v in agent_after.items() if v != agent_before.get(k)
    }
    result(out)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="driver")
    parser.add_argument("--controller", required=True, help="traffic controller host:port")
    parser.add_argument(
        "--tls-dir", help="mutual TLS identity (the cluster's engine Secret, mounted)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("engines")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=engines)
    p = sub.add_parser("de-read")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--block-tokens", type=int, required=True)
    p.add_argument("--bytes-per-token-layer", type=int, required=True)
    p.set_defaults(func=de_read)
    p = sub.add_parser("chat")
    p.add_argument("--router", required=True, help="the router's base URL (its Service)")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--prompt", required=True, help="turn 1's prompt token ids, a JSON list")
    p.add_argument("--extra", required=True, help="token ids turn 2 appends, a JSON list")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--decode-agent-metrics", required=True, help="the decode agent's /metrics")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=chat)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
