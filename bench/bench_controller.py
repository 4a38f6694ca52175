"""Traffic controller benchmark: decision speed of each policy at the paper's largest scale.

1. In-process: 1,152 engines (48 prefill nodes x 8 PEs + 96 decode nodes x 8 DEs, the
   paper's 48P96D run); each policy decides (schedule + apply) a stream of requests shaped
   like the paper's 64K trace while a bounded number stay in flight (the oldest is released
   as a new one comes). Reports decisions/s on one core and p50/p99 decision latency.
2. Over gRPC on loopback: the real controller process (`dualpath controller`) with the same
   1,152 engines registered; client processes offer a fixed rate of Schedule calls (open
   loop) and Complete each request after a hold time. Reports the sustained decisions/s and
   p50/p99 latency seen by the clients, then a closed-loop run for the saturation rate.

    python bench/bench_controller.py                        # full run (~1 minute)
    python bench/bench_controller.py --quick --json out.json

Targets (issue 4): >= 20,000 decisions/s in-process on one core; p99 < 2 ms over gRPC at
2,000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common.models import MODEL_PRESETS
from dualpath_controller.client import ControllerClient
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    Request,
    Role,
    get_policy,
    policy_names,
)
from dualpath_controller.process import ControllerProcess

PREFILL_NODES = 48
DECODE_NODES = 96
GPUS_PER_NODE = 8
HBM_TOKENS = 4_000_000
SNIC_BYTES_PER_S = 50e9
KV_BYTES_PER_TOKEN = MODEL_PRESETS["deepseek-v3.2-660b"].kv_bytes_per_token
# The paper's 64K trace (Table 2): mean context 32,721, 429 appended and 176 generated per turn.
MEAN_CONTEXT, MEAN_APPEND, MEAN_OUTPUT, MAX_CONTEXT = 32_721, 429, 176, 65_536


def engines() -> list[EngineState]:
    out = []
    for n in range(PREFILL_NODES):
        for g in range(GPUS_PER_NODE):
            out.append(EngineState(f"pn{n:02d}/gpu{g}", Role.PREFILL, f"pn{n:02d}"))
    for n in range(DECODE_NODES):
        for g in range(GPUS_PER_NODE):
            out.append(
                EngineState(
                    f"dn{n:02d}/gpu{g}",
                    Role.DECODE,
                    f"dn{n:02d}",
                    hbm_capacity_tokens=HBM_TOKENS,
                    free_hbm_tokens=HBM_TOKENS,
                )
            )
    return out


def requests(n: int, seed: int, prefix: str = "r") -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        total = min(MAX_CONTEXT, max(1_000, int(rng.expovariate(1 / MEAN_CONTEXT))))
        append = min(total, max(1, int(rng.expovariate(1 / MEAN_APPEND))))
        output = max(1, int(rng.expovariate(1 / MEAN_OUTPUT)))
        out.append(
            Request(f"{prefix}{i}", total, total - append, append, output, KV_BYTES_PER_TOKEN)
        )
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass
class InProcessResult:
    policy: str
    decisions: int
    seconds: float
    decisions_per_s: float
    # Throughput per CPU-second of this process: what one core sustains, less sensitive to
    # other processes competing for the machine than wall-clock throughput.
    decisions_per_cpu_s: float
    p50_us: float
    p99_us: float
    max_us: float
    paths: dict[str, int]


def bench_in_process(policy_name: str, n: int, in_flight: int, seed: int) -> InProcessResult:
    view = ClusterView()
    for engine in engines():
        view.add_engine(engine)
    for node in view.nodes:
        view.update_node_load(node, snic_read_bytes_per_s=SNIC_BYTES_PER_S)
    policy = get_policy(policy_name)
    stream = requests(n + in_flight, seed)
    live: deque[str] = deque()
    # Warm up to the steady state (in_flight requests booked), untimed.
    for request in stream[:in_flight]:
        view.apply(policy.schedule(view, request), request)
        live.append(request.request_id)
    latencies = [0.0] * n
    paths: dict[str, int] = {}
    clock = time.perf_counter
    started = clock()
    cpu_started = time.process_time()
    for i, request in enumerate(stream[in_flight:]):
        t0 = clock()
        assignment = policy.schedule(view, request)
        view.apply(assignment, request)
        latencies[i] = clock() - t0
        view.release(live.popleft())
        live.append(request.request_id)
        paths[assignment.read_path.value] = paths.get(assignment.read_path.value, 0) + 1
    seconds = clock() - started
    cpu_seconds = time.process_time() - cpu_started
    latencies.sort()
    return InProcessResult(
        policy_name,
        n,
        seconds,
        n / seconds,
        n / cpu_seconds,
        percentile(latencies, 0.50) * 1e6,
        percentile(latencies, 0.99) * 1e6,
        latencies[-1] * 1e6,
        paths,
    )


# ----- over gRPC -----


def register_all(target: str) -> None:
    with ControllerClient(target, timeout_s=30) as client:
        client.wait_ready()
        for e in engines():
            client.register_engine(
                e.engine_id,
                e.role,
                e.node,
                hbm_capacity_tokens=e.hbm_capacity_tokens,
                snic_read_bytes_per_s=SNIC_BYTES_PER_S,
            )


def _message(request: Request) -> pb.ScheduleRequest:
    return pb.ScheduleRequest(
        request_id=request.request_id,
        total_tokens=request.total_tokens,
        cached_tokens=request.cached_tokens,
        append_tokens=request.append_tokens,
        expected_output_tokens=request.expected_output_tokens,
        kv_bytes_per_token=request.kv_bytes_per_token,
    )


async def _open_loop(
    target: str, rate: float, seconds: float, hold_s: float, seed: int, prefix: str
) -> dict[str, object]:
    n = int(rate * seconds)
    batch = [_message(r) for r in requests(n, seed, prefix)]
    service: list[float] = []
    from_schedule: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrafficControllerStub(channel)
        await channel.channel_ready()
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        outstanding = 0  # scheduled requests not yet completed

        async def complete(rid: str) -> None:
            nonlocal outstanding
            try:
                await stub.Complete(pb.CompleteRequest(request_id=rid), timeout=10)
            except grpc.RpcError as exc:
                key = f"complete:{exc.code().name}"
                errors[key] = errors.get(key, 0) + 1
            finally:
                outstanding -= 1

        def later(rid: str) -> None:
            task = loop.create_task(complete(rid))
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def fire(message: pb.ScheduleRequest, planned: float) -> None:
            nonlocal outstanding
            t0 = time.perf_counter()
            try:
                await stub.Schedule(message, timeout=10)
            except grpc.RpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                return
            t1 = time.perf_counter()
            service.append(t1 - t0)
            from_schedule.append(t1 - planned)
            outstanding += 1
            loop.call_later(hold_s, later, message.request_id)

        start = time.perf_counter() + 0.05
        for i, message in enumerate(batch):
            planned = start + i / rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(fire(message, planned))
            pending.add(task)
            task.add_done_callback(pending.discard)
        offered_s = time.perf_counter() - start
        # Wait for every Schedule to answer and every Complete to go out and come back.
        give_up = time.perf_counter() + hold_s + 30
        while (pending or outstanding > 0) and time.perf_counter() < give_up:
            await asyncio.sleep(0.05)
    return {
        "service": service,
        "from_schedule": from_schedule,
        "errors": errors,
        "offered_s": offered_s,
        "sent": n,
    }


def _open_loop_futures(
    target: str, rate: float, seconds: float, hold_s: float, seed: int, prefix: str
) -> dict[str, object]:
    """Open loop with the blocking client's futures: one pacing thread sends, gRPC's own
    threads run the callbacks. Cheaper per call than grpc.aio on the client side."""
    n = int(rate * seconds)
    batch = [_message(r) for r in requests(n, seed, prefix)]
    service: list[float] = []
    from_schedule: list[float] = []
    errors: dict[str, int] = {}
    due: deque[tuple[float, str]] = deque()  # (complete at, request id), appended in order
    # gRPC cancels a call whose future is garbage-collected: keep them until they finish.
    live_calls: set[grpc.Future] = set()
    examples: dict[str, str] = {}
    completes_done = 0
    lock = threading.Lock()
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.TrafficControllerStub(channel)

        def scheduled(future: grpc.Future, rid: str, sent: float, planned: float) -> None:
            now = time.perf_counter()
            live_calls.discard(future)
            if future.exception() is not None:
                code = future.code().name
                with lock:
                    errors[code] = errors.get(code, 0) + 1
                    examples.setdefault(code, str(future.exception())[:600])
                return
            service.append(now - sent)
            from_schedule.append(now - planned)
            due.append((now + hold_s, rid))

        def completed(future: grpc.Future) -> None:
            nonlocal completes_done
            live_calls.discard(future)
            with lock:
                completes_done += 1
                if future.exception() is not None:
                    key = f"complete:{future.code().name}"
                    errors[key] = errors.get(key, 0) + 1
                    examples.setdefault(key, str(future.exception())[:600])

        completes_sent = 0

        def send_due_completes(now: float) -> None:
            nonlocal completes_sent
            while due and due[0][0] <= now:
                _, rid = due.popleft()
                call = stub.Complete.future(pb.CompleteRequest(request_id=rid), timeout=10)
                live_calls.add(call)
                call.add_done_callback(completed)
                completes_sent += 1

        start = time.perf_counter() + 0.05
        for i, message in enumerate(batch):
            planned = start + i / rate
            while (now := time.perf_counter()) < planned:
                send_due_completes(now)
                time.sleep(min(0.0005, planned - now))
            call = stub.Schedule.future(message, timeout=10)
            live_calls.add(call)
            call.add_done_callback(
                lambda f, rid=message.request_id, sent=now, p=planned: scheduled(f, rid, sent, p)
            )
        offered_s = time.perf_counter() - start
        give_up = time.perf_counter() + hold_s + 30
        while time.perf_counter() < give_up:
            send_due_completes(time.perf_counter())
            answered = len(service) + sum(v for k, v in errors.items() if ":" not in k)
            if answered == n and completes_done == completes_sent == len(service):
                break
            time.sleep(0.01)
    return {
        "service": service,
        "from_schedule": from_schedule,
        "errors": errors,
        "error_examples": examples,
        "offered_s": offered_s,
        "sent": n,
    }


def _client_proc(args: tuple[str, float, float, float, int, str, str]) -> dict[str, object]:
    *rest, kind = args
    if kind == "aio":
        return asyncio.run(_open_loop(*rest))  # type: ignore[arg-type]
    return _open_loop_futures(*rest)  # type: ignore[arg-type]


def bench_grpc_open_loop(
    target: str, rate: float, seconds: float, hold_s: float, procs: int, seed: int, client: str
) -> dict[str, object]:
    per_proc = rate / procs
    jobs = [
        (target, per_proc, seconds, hold_s, seed + k, f"open{seed}-{k}-", client)
        for k in range(procs)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.map(_client_proc, jobs)
    service = sorted(x for p in parts for x in p["service"])  # type: ignore[attr-defined]
    lagged = sorted(x for p in parts for x in p["from_schedule"])  # type: ignore[attr-defined]
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():  # type: ignore[attr-defined]
            errors[k] = errors.get(k, 0) + v
    examples: dict[str, str] = {}
    for p in parts:
        examples.update(p.get("error_examples", {}))  # type: ignore[call-overload]
    offered_s = max(float(p["offered_s"]) for p in parts)  # type: ignore[arg-type]
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "client_processes": procs,
        "client": client,
        "sent": sum(int(p["sent"]) for p in parts),  # type: ignore[call-overload]
        "answered": len(service),
        "decisions_per_s": len(service) / offered_s,
        "errors": errors,
        "error_examples": examples,
        "p50_ms": percentile(service, 0.50) * 1e3,
        "p99_ms": percentile(service, 0.99) * 1e3,
        "max_ms": (service[-1] * 1e3) if service else float("nan"),
        "p99_from_planned_send_ms": percentile(lagged, 0.99) * 1e3,
    }


async def _closed_loop(
    target: str, concurrency: int, seconds: float, seed: int
) -> dict[str, object]:
    reqs = iter(requests(10**7, seed, f"closed{seed}-"))
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TrafficControllerStub(channel)
        await channel.channel_ready()
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                message = _message(next(reqs))
                t0 = time.perf_counter()
                await stub.Schedule(message, timeout=10)
                latencies.append(time.perf_counter() - t0)
                await stub.Complete(pb.CompleteRequest(request_id=message.request_id), timeout=10)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "decisions_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "note": "one client process; each decision is followed by its Complete (2 RPCs)",
    }


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_avg_1m": os.getloadavg()[0],
        "grpc": grpc.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="*", default=policy_names())
    parser.add_argument("--decisions", type=int, default=50_000, help="in-process, per policy")
    parser.add_argument("--in-flight", type=int, default=4_000, help="requests kept booked")
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered gRPC req/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="gRPC open-loop duration")
    parser.add_argument("--hold-s", type=float, default=1.0, help="time before Complete")
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument(
        "--client", choices=["futures", "aio"], default="futures", help="load generator kind"
    )
    parser.add_argument("--grpc-policy", default="paper")
    parser.add_argument("--closed-concurrency", type=int, default=32)
    parser.add_argument("--server-workers", type=int, default=32, help="controller --max-workers")
    parser.add_argument("--pin-cpu", type=int, default=None, help="pin the in-process part")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small run (smoke test)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.decisions, args.in_flight, args.seconds = 5_000, 1_000, 2.0
    command = " ".join([Path(sys.executable).name, *sys.argv])
    results: dict[str, object] = {"command": command, "machine": machine()}
    n_engines = (PREFILL_NODES + DECODE_NODES) * GPUS_PER_NODE
    print(f"in-process: {n_engines} engines, {args.decisions} decisions per policy", flush=True)
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    in_process = []
    for name in args.policies:
        r = bench_in_process(name, args.decisions, args.in_flight, args.seed)
        in_process.append(vars(r))
        print(
            f"  {name:15s} {r.decisions_per_s:7.0f} decisions/s ({r.decisions_per_cpu_s:.0f} per"
            f" CPU-s)  p50 {r.p50_us:5.1f} us"
            f"  p99 {r.p99_us:6.1f} us  max {r.max_us:7.1f} us  paths {r.paths}",
            flush=True,
        )
    results["in_process"] = in_process
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    if not args.skip_grpc:
        with ControllerProcess(
            policy=args.grpc_policy,
            liveness_timeout_s=3_600,
            extra_args=["--max-workers", str(args.server_workers)],
        ) as proc:
            register_all(proc.target)
            print(
                f"gRPC: controller pid {proc.proc.pid if proc.proc else '?'} on {proc.target},"
                f" policy {args.grpc_policy}; open loop {args.rate:g} req/s for {args.seconds:g} s"
                f" from {args.client_procs} client processes",
                flush=True,
            )
            assert proc.proc is not None
            server_cpu_before = process_cpu_seconds(proc.proc.pid)
            open_loop = bench_grpc_open_loop(
                proc.target,
                args.rate,
                args.seconds,
                args.hold_s,
                args.client_procs,
                args.seed,
                args.client,
            )
            server_cpu = process_cpu_seconds(proc.proc.pid) - server_cpu_before
            answered = max(1, int(open_loop["answered"]))  # type: ignore[call-overload]
            open_loop["server_cpu_us_per_request"] = server_cpu / answered * 1e6
            open_loop["note"] = (
                "each request = Schedule + its Complete after hold_s; server CPU covers both"
            )
            print(
                f"  sustained {open_loop['decisions_per_s']:.0f} decisions/s,"
                f" p50 {open_loop['p50_ms']:.2f} ms, p99 {open_loop['p99_ms']:.2f} ms,"
                f" max {open_loop['max_ms']:.2f} ms, errors {open_loop['errors']};"
                f" server CPU {open_loop['server_cpu_us_per_request']:.0f} us per"
                " Schedule+Complete",
                flush=True,
            )
            print(f"  closed loop, {args.closed_concurrency} in flight ...", flush=True)
            closed = asyncio.run(
                _closed_loop(
                    proc.target, args.closed_concurrency, min(5.0, args.seconds), args.seed
                )
            )
            print(
                f"  saturation {closed['decisions_per_s']:.0f} decisions/s,"
                f" p50 {closed['p50_ms']:.2f} ms, p99 {closed['p99_ms']:.2f} ms",
                flush=True,
            )
            status = ControllerClient(proc.target).status()
            results["grpc"] = {
                "policy": args.grpc_policy,
                "server_workers": args.server_workers,
                "open_loop": open_loop,
                "closed_loop": closed,
                "controller_decisions_total": status.decisions_total,
                "controller_in_flight_at_end": status.in_flight_requests,
            }
    results["machine_after"] = {"load_avg_1m": os.getloadavg()[0]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
