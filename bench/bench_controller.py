"""Traffic controller benchmark: decision speed of each policy at the paper's largest scale.

1. In-process: 1,152 engines (48 prefill nodes x 8 PEs + 96 decode nodes x 8 DEs, the
   paper's 48P96D run); each policy decides (schedule + apply) a stream of requests shaped
   like the paper's 64K trace while a bounded number stay in flight (the oldest is released
   as a new one comes). Reports decisions/s on one core and p50/p99 decision latency.
2. Over gRPC on loopback: the real controller process (`dualpath controller`) with the same
   1,152 engines registered; client processes (separate from the server) offer a fixed rate
   of requests (open loop), each Scheduled and Completed after a hold time, once with the
   unary calls and once over Session streams (`ControllerSession`, one or more streams per
   client process, like several frontends), side by side in the same run (orders alternate
   when repeated). Reports sustained decisions/s, p50/p99/p999 latency, errors, and CPU
   seconds per request of the server and of the client processes (from /proc and
   process_time), with the load average, since the machine may be shared.
   Optionally a closed-loop run per API for the saturation rate.

    python bench/bench_controller.py                        # full run (~2 minutes)
    python bench/bench_controller.py --quick --json out.json

Targets (issue 4): >= 20,000 decisions/s in-process on one core; p99 < 2 ms over gRPC at
2,000 req/s. Issue 13: server CPU <= 120 us per request, with one core for the controller:

    python bench/bench_controller.py --skip-in-process --apis unary session --server-cpu 1 \
        --closed-concurrency 128 --json out.json          # controller pinned (taskset)
    ... --server-pythonpath DIR      # A/B: another dualpath_controller for the controller only
    ... --profile-server FILE        # cProfile of the controller's event-loop thread
    ... --batch-window-ms 1          # the controller's batching window

What gRPC alone costs per request (the floor under that target): bench/bench_controller_aio.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common.models import MODEL_PRESETS
from dualpath_controller.client import (
    RELEASE_LINGER_S,
    AsyncControllerSession,
    ControllerClient,
    ControllerSession,
)
from dualpath_controller.policy import (
    ClusterView,
    EngineState,
    Request,
    Role,
    get_policy,
    policy_names,
)
from dualpath_controller.process import ControllerProcess
from prometheus_client.parser import text_string_to_metric_families

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


def iter_requests(seed: int, prefix: str = "r") -> Iterator[Request]:
    """Endless requests shaped like the 64K trace (deterministic for a seed)."""
    rng = random.Random(seed)
    for i in itertools.count():
        total = min(MAX_CONTEXT, max(1_000, int(rng.expovariate(1 / MEAN_CONTEXT))))
        append = min(total, max(1, int(rng.expovariate(1 / MEAN_APPEND))))
        output = max(1, int(rng.expovariate(1 / MEAN_OUTPUT)))
        yield Request(f"{prefix}{i}", total, total - append, append, output, KV_BYTES_PER_TOKEN)


def requests(n: int, seed: int, prefix: str = "r") -> list[Request]:
    return list(itertools.islice(iter_requests(seed, prefix), n))


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


# unary: one Schedule and one Complete call per request (ControllerClient's stub, futures);
# session: ControllerSession (threaded frontend: a pacing thread hands operations over);
# session-async: AsyncControllerSession (asyncio frontend: pacing and answers on one loop).
APIS = ("unary", "session", "session-async")


@dataclass(frozen=True)
class ClientJob:
    """What one client process does (picklable: sent to a spawned process)."""

    api: str  # "unary": Schedule/Complete calls; "session": ControllerSession streams
    target: str
    rate: float  # this process's share of the offered rate (open loop); 0 = closed loop
    seconds: float
    hold_s: float
    seed: int
    prefix: str
    streams: int = 1
    max_batch: int = 256
    concurrency: int = 0  # closed loop: requests kept in flight by this process
    release_linger_s: float = RELEASE_LINGER_S


class _UnaryApi:
    """Blocking-client futures: gRPC's threads run the callbacks. Cheaper per call on the
    client than grpc.aio (measured when this bench was written)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.TrafficControllerStub(self.channel)
        # gRPC cancels a call whose future is garbage-collected: keep them until they finish.
        self.live: set[grpc.Future] = set()

    def _keep(self, call: grpc.Future) -> grpc.Future:
        self.live.add(call)
        call.add_done_callback(self.live.discard)
        return call

    def schedule(self, message: pb.ScheduleRequest) -> grpc.Future:
        return self._keep(self.stub.Schedule.future(message, timeout=30))

    def complete(self, request_id: str) -> grpc.Future:
        return self._keep(
            self.stub.Complete.future(pb.CompleteRequest(request_id=request_id), timeout=30)
        )

    def stats(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        self.channel.close()


class _SessionApi:
    def __init__(self, target: str, streams: int, max_batch: int, linger_s: float) -> None:
        self.session = ControllerSession(
            target,
            streams=streams,
            timeout_s=30,
            max_batch=max_batch,
            release_linger_s=linger_s,
        )
        self.session.wait_ready(30)
        self.session.connect()  # open the streams before the clock starts

    def schedule(self, message: pb.ScheduleRequest) -> Any:
        return self.session.submit(schedule=message)

    def complete(self, request_id: str) -> Any:
        return self.session.submit(complete=pb.CompleteRequest(request_id=request_id))

    def stats(self) -> dict[str, object]:
        messages, operations = self.session.batching()
        return {
            "streams": len(self.session._core.streams),
            "messages_sent": messages,
            "operations_sent": operations,
            "streams_opened": self.session.streams_opened,
        }

    def close(self) -> None:
        self.session.close()


def _api(job: ClientJob) -> _UnaryApi | _SessionApi:
    if job.api == "unary":
        return _UnaryApi(job.target)
    return _SessionApi(job.target, job.streams, job.max_batch, job.release_linger_s)


class _Recorder:
    """Latencies and outcomes, filled by callbacks on gRPC / session reader threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.service: list[float] = []  # send -> answer
        self.from_planned: list[float] = []  # planned send time -> answer (pacing lag too)
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.completes_done = 0
        self.last_answer = 0.0

    def error(self, key: str, exc: BaseException) -> None:
        with self.lock:
            self.errors[key] = self.errors.get(key, 0) + 1
            self.examples.setdefault(key, str(exc)[:600])


def _code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code().name if callable(code) else type(exc).__name__


def _open_loop_result(
    rec: _Recorder,
    start: float,
    offered_s: float,
    sent: int,
    completes_sent: int,
    cpu_s: float,
    api_stats: dict[str, object],
) -> dict[str, object]:
    """What an open-loop run reports, threaded or on one event loop alike."""
    return {
        "service": rec.service,
        "from_planned": rec.from_planned,
        "errors": rec.errors,
        "error_examples": rec.examples,
        "offered_s": offered_s,
        "answered_s": (rec.last_answer - start) if rec.service else offered_s,
        "sent": sent,
        "completes_sent": completes_sent,
        "client_cpu_s": cpu_s,
        "api_stats": api_stats,
    }


def _open_loop(job: ClientJob) -> dict[str, object]:
    """Offer job.rate Schedules/s for job.seconds; Complete each hold_s after its answer."""
    n = int(job.rate * job.seconds)
    batch = [_message(r) for r in requests(n, job.seed, job.prefix)]
    api = _api(job)
    rec = _Recorder()
    due: deque[tuple[float, str]] = deque()  # (complete at, request id), in answer order
    completes_sent = 0

    def scheduled(rid: str, sent: float, planned: float, future: Any) -> None:
        now = time.perf_counter()
        exc = future.exception()
        if exc is not None:
            rec.error(_code(exc), exc)
            return
        with rec.lock:
            rec.service.append(now - sent)
            rec.from_planned.append(now - planned)
            rec.last_answer = now
        due.append((now + job.hold_s, rid))

    def completed(future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            rec.error(f"complete:{_code(exc)}", exc)
        with rec.lock:
            rec.completes_done += 1

    def send_due_completes(now: float) -> None:
        nonlocal completes_sent
        while due and due[0][0] <= now:
            _, rid = due.popleft()
            api.complete(rid).add_done_callback(completed)
            completes_sent += 1

    cpu_started = time.process_time()
    start = time.perf_counter() + 0.05
    for i, message in enumerate(batch):
        planned = start + i / job.rate
        while (now := time.perf_counter()) < planned:
            send_due_completes(now)
            time.sleep(planned - now)  # hrtimer: ~50-100 us late at most on an idle core
        call = api.schedule(message)
        call.add_done_callback(partial(scheduled, message.request_id, now, planned))
    offered_s = time.perf_counter() - start
    give_up = time.perf_counter() + job.hold_s + 60
    while time.perf_counter() < give_up:
        send_due_completes(time.perf_counter())
        with rec.lock:
            answered = len(rec.service) + sum(v for k, v in rec.errors.items() if ":" not in k)
            finished = rec.completes_done == completes_sent == len(rec.service)
        if answered == n and finished:
            break
        time.sleep(0.005)
    cpu_s = time.process_time() - cpu_started
    stats = api.stats()
    api.close()
    return _open_loop_result(rec, start, offered_s, n, completes_sent, cpu_s, stats)


def _closed_loop(job: ClientJob) -> dict[str, object]:
    """Keep job.concurrency requests in flight (each answer Completes its request and sends
    the next Schedule) for job.seconds: the saturation rate."""
    reqs = iter_requests(job.seed, job.prefix)
    api = _api(job)
    rec = _Recorder()
    stop_at = time.perf_counter() + job.seconds
    active = threading.Semaphore(0)

    def send() -> None:
        if time.perf_counter() >= stop_at:
            active.release()
            return
        with rec.lock:  # callbacks may run on several threads; a generator is not shared
            message = _message(next(reqs))
        sent = time.perf_counter()
        api.schedule(message).add_done_callback(partial(answered, message.request_id, sent))

    def answered(rid: str, sent: float, future: Any) -> None:
        now = time.perf_counter()
        exc = future.exception()
        if exc is not None:
            rec.error(_code(exc), exc)
        else:
            with rec.lock:
                rec.service.append(now - sent)
            api.complete(rid)
        send()

    cpu_started = time.process_time()
    started = time.perf_counter()
    for _ in range(job.concurrency):
        send()
    for _ in range(job.concurrency):
        active.acquire(timeout=job.seconds + 60)
    elapsed = time.perf_counter() - started
    time.sleep(0.2)  # let the last Completes go out before closing
    cpu_s = time.process_time() - cpu_started
    api.close()
    return {
        "service": rec.service,
        "from_planned": [],
        "errors": rec.errors,
        "error_examples": rec.examples,
        "offered_s": elapsed,
        "answered_s": elapsed,
        "sent": len(rec.service),
        "client_cpu_s": cpu_s,
        "api_stats": {},
    }


async def _open_loop_async(job: ClientJob) -> dict[str, object]:
    """_open_loop for an asyncio frontend: everything on one event loop."""
    n = int(job.rate * job.seconds)
    batch = [_message(r) for r in requests(n, job.seed, job.prefix)]
    rec = _Recorder()
    completes_sent = 0
    async with AsyncControllerSession(
        job.target,
        streams=job.streams,
        timeout_s=30,
        max_batch=job.max_batch,
        release_linger_s=job.release_linger_s,
    ) as session:
        await session.wait_ready(30)
        session.connect()
        loop = asyncio.get_running_loop()

        def completed(future: asyncio.Future[Any]) -> None:
            exc = future.exception()
            if exc is not None:
                rec.error(f"complete:{_code(exc)}", exc)
            rec.completes_done += 1

        def send_complete(rid: str) -> None:
            nonlocal completes_sent
            completes_sent += 1
            session.complete_nowait(rid).add_done_callback(completed)

        def scheduled(rid: str, sent: float, planned: float, future: asyncio.Future[Any]) -> None:
            now = time.perf_counter()
            exc = future.exception()
            if exc is not None:
                rec.error(_code(exc), exc)
                return
            rec.service.append(now - sent)
            rec.from_planned.append(now - planned)
            rec.last_answer = now
            loop.call_later(job.hold_s, send_complete, rid)

        cpu_started = time.process_time()
        start = time.perf_counter() + 0.05
        for i, message in enumerate(batch):
            planned = start + i / job.rate
            delay = planned - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            session.schedule_nowait(message).add_done_callback(
                partial(scheduled, message.request_id, now, planned)
            )
        offered_s = time.perf_counter() - start
        give_up = time.perf_counter() + job.hold_s + 60
        while time.perf_counter() < give_up:
            answered = len(rec.service) + sum(v for k, v in rec.errors.items() if ":" not in k)
            if answered == n and rec.completes_done == completes_sent == len(rec.service):
                break
            await asyncio.sleep(0.005)
        cpu_s = time.process_time() - cpu_started
        messages, operations = session.batching()
        stats: dict[str, object] = {
            "streams": job.streams,
            "messages_sent": messages,
            "operations_sent": operations,
            "streams_opened": session.streams_opened,
        }
    return _open_loop_result(rec, start, offered_s, n, completes_sent, cpu_s, stats)


def _client_proc(job: ClientJob) -> dict[str, object]:
    if job.api == "session-async":
        if job.concurrency:
            raise ValueError("closed loop runs use the unary and session APIs")
        return asyncio.run(_open_loop_async(job))
    return _closed_loop(job) if job.concurrency else _open_loop(job)


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    service = sorted(x for p in parts for x in p["service"])
    lagged = sorted(x for p in parts for x in p["from_planned"])
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    stats: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
        examples.update(p["error_examples"])
        for k, v in p["api_stats"].items():
            stats[k] = stats.get(k, 0) + v
    answered_s = max(float(p["answered_s"]) for p in parts)
    ms = 1e3
    out: dict[str, Any] = {
        "sent": sum(int(p["sent"]) for p in parts),
        "answered": len(service),
        # Answers per second from the first planned send to the last answer: a server that
        # falls behind stretches the denominator.
        "decisions_per_s": len(service) / answered_s if answered_s > 0 else 0.0,
        "errors": errors,
        "error_examples": examples,
        "p50_ms": percentile(service, 0.50) * ms,
        "p99_ms": percentile(service, 0.99) * ms,
        "p999_ms": percentile(service, 0.999) * ms,
        "max_ms": service[-1] * ms if service else float("nan"),
        "p99_from_planned_send_ms": percentile(lagged, 0.99) * ms,
        "client_cpu_s": sum(float(p["client_cpu_s"]) for p in parts),
    }
    if stats.get("messages_sent"):
        stats["operations_per_message"] = round(
            stats["operations_sent"] / stats["messages_sent"], 3
        )  # type: ignore[assignment]
    out["session"] = stats or None
    return out


def gc_pauses(metrics_port: int | None) -> dict[str, list[tuple[float, float]]]:
    """The controller's GC pause histogram: generation -> [(bucket bound, cumulative count)],
    plus "sum:<gen>" entries, from its /metrics."""
    out: dict[str, list[tuple[float, float]]] = {}
    if metrics_port is None:
        return out
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name != "dualpath_controller_gc_pause_seconds":
            continue
        for sample in family.samples:
            generation = sample.labels.get("generation", "?")
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                out.setdefault(generation, []).append((bound, sample.value))
            elif sample.name.endswith("_sum"):
                out[f"sum:{generation}"] = [(0.0, sample.value)]
    return out


def gc_delta(
    before: dict[str, list[tuple[float, float]]], after: dict[str, list[tuple[float, float]]]
) -> dict[str, object]:
    """GC pauses during a run: count, total seconds and the bucket bound of the largest."""
    out: dict[str, object] = {}
    for generation in ("0", "1", "2"):
        if generation not in after:
            continue
        old = dict(before.get(generation, []))
        buckets = [(b, c - old.get(b, 0.0)) for b, c in after[generation]]
        count = buckets[-1][1] if buckets else 0.0
        largest = next((b for b, c in buckets if c >= count), float("nan")) if count else 0.0
        total = after[f"sum:{generation}"][0][1] - before.get(f"sum:{generation}", [(0, 0)])[0][1]
        out[f"gen{generation}"] = {
            "pauses": int(count),
            "total_ms": round(total * 1e3, 2),
            "largest_le_ms": largest * 1e3,
        }
    return out


def bench_grpc_run(
    api: str,
    target: str,
    server_pid: int,
    *,
    metrics_port: int | None = None,
    rate: float,
    seconds: float,
    hold_s: float,
    procs: int,
    streams: int,
    max_batch: int,
    concurrency: int,
    seed: int,
    pool: Any,
    release_linger_s: float = RELEASE_LINGER_S,
) -> dict[str, Any]:
    """One open-loop (concurrency 0) or closed-loop run of one API from `procs` client
    processes; CPU of server and clients measured over the run."""
    tag = "closed" if concurrency else "open"
    jobs = [
        ClientJob(
            api,
            target,
            rate / procs,
            seconds,
            hold_s,
            seed + k,
            f"{tag}-{api}-{seed}-{k}-",
            streams,
            max_batch,
            concurrency // procs if concurrency else 0,
            release_linger_s,
        )
        for k in range(procs)
    ]
    load_before = os.getloadavg()[0]
    gc_before = gc_pauses(metrics_port)
    server_cpu_before = process_cpu_seconds(server_pid)
    parts = pool.map(_client_proc, jobs)
    server_cpu = process_cpu_seconds(server_pid) - server_cpu_before
    server_gc = gc_delta(gc_before, gc_pauses(metrics_port))
    out = _merge(parts)
    requests_done = max(1, int(out["answered"]))
    out.update(
        api=api,
        mode="closed" if concurrency else "open",
        offered_rate=rate if not concurrency else None,
        concurrency=concurrency or None,
        seconds=seconds,
        client_processes=procs,
        streams_per_process=streams if api == "session" else None,
        server_cpu_s=server_cpu,
        server_cpu_us_per_request=server_cpu / requests_done * 1e6,
        client_cpu_us_per_request=float(out["client_cpu_s"]) / requests_done * 1e6,
        load_avg_1m_before=load_before,
        load_avg_1m_after=os.getloadavg()[0],
        server_gc_pauses=server_gc,
    )
    return out


def _print_run(r: dict[str, Any]) -> None:
    batching = ""
    if r.get("session"):
        batching = f", {r['session'].get('operations_per_message', 0):.2f} ops/message"
    gc_text = " ".join(
        f"{g}:{v['pauses']}x/{v['total_ms']:.0f}ms(<={v['largest_le_ms']:g})"
        for g, v in r.get("server_gc_pauses", {}).items()
        if v["pauses"]
    )
    print(
        f"  {r['api']:7s} {r['decisions_per_s']:6.0f} decisions/s ({r['answered']}/{r['sent']}),"
        f" p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, p999 {r['p999_ms']:.2f} ms,"
        f" errors {r['errors'] or 0}; CPU per request: server {r['server_cpu_us_per_request']:.0f}"
        f" us, clients {r['client_cpu_us_per_request']:.0f} us{batching};"
        f" server GC {gc_text or '-'};"
        f" load {r['load_avg_1m_before']:.1f}->{r['load_avg_1m_after']:.1f}",
        flush=True,
    )


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    from google.protobuf.internal import api_implementation

    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_avg_1m": os.getloadavg()[0],
        "grpc": grpc.__version__,
        "protobuf_backend": api_implementation.Type(),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per API over the open-loop repeats: the median run by p99, and the ratios."""
    out: dict[str, Any] = {}
    for api in APIS:
        mine = sorted(
            (r for r in runs if r["api"] == api and r["mode"] == "open"),
            key=lambda r: r["p99_ms"],
        )
        if mine:
            median = mine[len(mine) // 2]
            out[api] = {
                k: median[k]
                for k in (
                    "decisions_per_s",
                    "p50_ms",
                    "p99_ms",
                    "p999_ms",
                    "server_cpu_us_per_request",
                    "client_cpu_us_per_request",
                    "errors",
                    "load_avg_1m_before",
                )
            }
            out[api]["repeats"] = len(mine)
            out[api]["p99_ms_all"] = [round(r["p99_ms"], 3) for r in mine]
    for api in APIS[1:]:
        if "unary" in out and api in out:
            for side in ("server", "client"):
                key = f"{side}_cpu_us_per_request"
                out[f"{side}_cpu_ratio_{api}_vs_unary"] = out[api][key] / out["unary"][key]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="*", default=policy_names())
    parser.add_argument("--decisions", type=int, default=50_000, help="in-process, per policy")
    parser.add_argument("--in-flight", type=int, default=4_000, help="requests kept booked")
    parser.add_argument("--rate", type=float, default=2_000.0, help="offered gRPC req/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="gRPC open-loop duration")
    parser.add_argument("--hold-s", type=float, default=1.0, help="time before Complete")
    parser.add_argument("--client-procs", type=int, default=4, help="client processes per run")
    parser.add_argument("--streams", type=int, default=1, help="Session streams per client process")
    parser.add_argument(
        "--max-batch", type=int, default=256, help="operations per Session message, at most"
    )
    parser.add_argument(
        "--release-linger-s",
        type=float,
        default=RELEASE_LINGER_S,
        help="session clients: how long a Complete may wait for a Schedule to ride with",
    )
    parser.add_argument(
        "--apis", nargs="*", default=list(APIS), choices=APIS, help="gRPC APIs to compare"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="open-loop runs per API (order alternates)"
    )
    parser.add_argument("--grpc-policy", default="paper")
    parser.add_argument(
        "--closed-concurrency",
        type=int,
        default=32,
        help="requests in flight for the closed-loop (saturation) runs; 0 = skip them",
    )
    parser.add_argument("--closed-seconds", type=float, default=5.0)
    parser.add_argument("--server-workers", type=int, default=32, help="controller --max-workers")
    parser.add_argument("--pin-cpu", type=int, default=None, help="pin the in-process part")
    parser.add_argument(
        "--server-cpu",
        type=int,
        default=None,
        help="pin the controller process to this CPU (taskset): one core for the controller",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="the controller's --batch-window-ms (Schedules decided together)",
    )
    parser.add_argument(
        "--server-pythonpath",
        type=Path,
        default=None,
        help="PYTHONPATH for the controller process only (A/B runs of two versions of"
        " dualpath_controller against the same clients)",
    )
    parser.add_argument(
        "--profile-server",
        type=Path,
        default=None,
        help="run the controller under cProfile and write its stats here (pstats format)",
    )
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small run (smoke test)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.decisions, args.in_flight, args.seconds = 5_000, 1_000, 2.0
        args.closed_seconds = min(args.closed_seconds, 1.0)
    command = " ".join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])
    results: dict[str, object] = {"command": command, "machine": machine()}
    if not args.skip_in_process:
        results["in_process"] = run_in_process(args)
    if not args.skip_grpc:
        results["grpc"] = run_grpc(args)
    results["machine_after"] = {"load_avg_1m": os.getloadavg()[0]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def run_in_process(args: argparse.Namespace) -> list[dict[str, object]]:
    n_engines = (PREFILL_NODES + DECODE_NODES) * GPUS_PER_NODE
    print(f"in-process: {n_engines} engines, {args.decisions} decisions per policy", flush=True)
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, {args.pin_cpu})
    in_process = []
    for name in args.policies:
        r = bench_in_process(name, args.decisions, args.in_flight, args.seed)
        in_process.append(asdict(r))
        print(
            f"  {name:15s} {r.decisions_per_s:7.0f} decisions/s ({r.decisions_per_cpu_s:.0f} per"
            f" CPU-s)  p50 {r.p50_us:5.1f} us"
            f"  p99 {r.p99_us:6.1f} us  max {r.max_us:7.1f} us  paths {r.paths}",
            flush=True,
        )
    if args.pin_cpu is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return in_process


# Runs `python -m <module> args...` with cProfile on the thread named grpc-loop (where every
# handler runs; cProfile sees only the thread that enabled it), stats written when it ends.
PROFILE_LOOP = """
import cProfile, runpy, sys, threading
profile, run = cProfile.Profile(), threading.Thread.run
def profiled(self):
    if self.name != "grpc-loop":
        return run(self)
    profile.enable()
    try:
        run(self)
    finally:
        profile.disable()
        profile.dump_stats({path!r})
threading.Thread.run = profiled
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def server_command(
    command: list[str], cpu: int | None, profile: Path | None, pythonpath: Path | None = None
) -> list[str]:
    """The controller's command line, optionally pinned to one CPU (taskset) and/or with its
    event-loop thread under cProfile (the controller exits cleanly on SIGTERM, so the stats
    get written)."""
    out = list(command)
    if profile is not None:
        assert out[1] == "-m", out
        out = [out[0], "-c", PROFILE_LOOP.format(path=str(profile)), *out[2:]]
    if cpu is not None:
        out = ["taskset", "-c", str(cpu), *out]
    if pythonpath is not None:
        out = ["env", f"PYTHONPATH={pythonpath}", *out]
    return out


def run_grpc(args: argparse.Namespace) -> dict[str, object]:
    ctx = multiprocessing.get_context("spawn")
    controller = ControllerProcess(
        policy=args.grpc_policy,
        liveness_timeout_s=3_600,
        extra_args=[
            "--max-workers",
            str(args.server_workers),
            "--log-level",
            "WARNING",
            *(["--batch-window-ms", str(args.batch_window_ms)] if args.batch_window_ms else []),
        ],
    )
    controller.args = server_command(
        controller.args, args.server_cpu, args.profile_server, args.server_pythonpath
    )
    with controller as proc, ctx.Pool(args.client_procs) as pool:
        assert proc.proc is not None
        register_all(proc.target)
        pool.map(math.sqrt, range(args.client_procs))  # start the client processes untimed
        print(
            f"gRPC: controller pid {proc.proc.pid} on {proc.target}, policy {args.grpc_policy};"
            f" open loop {args.rate:g} req/s for {args.seconds:g} s from {args.client_procs}"
            f" client processes (session: {args.streams} stream(s) each), hold {args.hold_s:g} s",
            flush=True,
        )
        common = {
            "target": proc.target,
            "server_pid": proc.proc.pid,
            "metrics_port": proc.metrics_port,
            "procs": args.client_procs,
            "streams": args.streams,
            "max_batch": args.max_batch,
            "release_linger_s": args.release_linger_s,
            "hold_s": args.hold_s,
            "pool": pool,
        }
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            order = args.apis if repeat % 2 == 0 else list(reversed(args.apis))
            for api in order:
                r = bench_grpc_run(
                    api,
                    rate=args.rate,
                    seconds=args.seconds,
                    concurrency=0,
                    seed=args.seed + 1000 * repeat,
                    **common,
                )
                runs.append(r)
                _print_run(r)
        if args.closed_concurrency:
            print(f"  closed loop, {args.closed_concurrency} in flight:", flush=True)
            for api in (a for a in args.apis if a != "session-async"):
                r = bench_grpc_run(
                    api,
                    rate=0.0,
                    seconds=args.closed_seconds,
                    concurrency=max(args.closed_concurrency, args.client_procs),
                    seed=args.seed + 99,
                    **common,
                )
                runs.append(r)
                _print_run(r)
        status = ControllerClient(proc.target).status()
        summary = _summary(runs)
        print(f"  summary (median open-loop run by p99): {json.dumps(summary)}", flush=True)
        return {
            "policy": args.grpc_policy,
            "server_workers": args.server_workers,
            "server_cpu": args.server_cpu,
            "batch_window_ms": args.batch_window_ms,
            "server_pythonpath": str(args.server_pythonpath or ""),
            "runs": runs,
            "summary": summary,
            "controller_decisions_total": status.decisions_total,
            "controller_in_flight_at_end": status.in_flight_requests,
        }


if __name__ == "__main__":
    sys.exit(main())
