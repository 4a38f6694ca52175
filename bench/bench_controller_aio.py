"""grpc.aio or a thread pool for the controller's gRPC server? And what does gRPC itself
cost? Measured side by side.

One controller process serves the same state (same ControllerState, same lock, same
operations) twice: on `ControllerServer` (grpc.aio, what `dualpath controller` runs) and on
a threaded `grpc.server` on a second port (the controller's former design: handlers on a
ThreadPoolExecutor, Session as a blocking generator). A third port, `floor`, is a grpc.aio
Session that answers every operation with an empty result and touches no state: the floor
that gRPC and asyncio set for any Python server of this API. Client processes offer the same
open-loop load to each, in turn, and the server's CPU per request is taken from /proc for
each run (only one port is busy at a time).

    python bench/bench_controller_aio.py --json out.json          # Session, ~2 minutes
    python bench/bench_controller_aio.py --api unary --rate 1000   # unary calls
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_controller as bc
import grpc
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_common.child import ReadyFileProcess, write_ready_file


class Floor(pb_grpc.TrafficControllerServicer):
    """Session answered at once with empty results: gRPC's and asyncio's share of a request."""

    async def Session(self, request_iterator: Any, context: Any) -> None:
        while (batch := await context.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            out = pb.SessionResponseBatch()
            for item in batch.requests:
                answer = out.responses.add(correlation_id=item.correlation_id)
                getattr(answer, item.WhichOneof("operation")).SetInParent()
            await context.write(out)


def serve_floor() -> int:
    """The floor server on its own event loop thread; returns its port."""
    ready: queue.Queue[int] = queue.Queue()

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_TrafficControllerServicer_to_server(Floor(), server)
        ready.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    threading.Thread(target=asyncio.run, args=(run(),), daemon=True, name="floor").start()
    return ready.get(timeout=30)


def serve(ready_file: Path) -> None:
    """The controller process: ControllerServer (aio) + a threaded server on one state."""
    import gc

    from dualpath_controller.policy import get_policy
    from dualpath_controller.server import ControllerServer
    from dualpath_controller.state import ControllerError, ControllerState

    state = ControllerState(get_policy("paper"), liveness_timeout_s=3_600)
    server = ControllerServer(state, "127.0.0.1:0", metrics_port=0)
    port = server.start()
    service = server.service

    class Threaded(pb_grpc.TrafficControllerServicer):
        """The former threaded handlers, over the same operations and lock."""

        def _run(self, context: Any, fn: Any, request: Any) -> Any:
            try:
                with service.lock:
                    return fn(request)
            except ControllerError as exc:
                context.abort(exc.code, exc.message)

        def RegisterEngine(self, request: Any, context: Any) -> Any:
            return self._run(context, lambda r: state.register(r.engine, server.clock()), request)

        def Schedule(self, request: Any, context: Any) -> Any:
            return self._run(context, service._schedule, request)

        def Complete(self, request: Any, context: Any) -> Any:
            return self._run(context, service._complete, request)

        def Session(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
            for batch in request_iterator:
                yield service.answer_batch(batch)

    threaded = grpc.server(futures.ThreadPoolExecutor(48, thread_name_prefix="grpc"))
    pb_grpc.add_TrafficControllerServicer_to_server(Threaded(), threaded)
    threaded_port = threaded.add_insecure_port("127.0.0.1:0")
    threaded.start()
    gc.collect()
    gc.freeze()  # as `dualpath controller` does
    assert server.observability is not None
    floor_port = serve_floor()
    info = {
        "aio": port,
        "threaded": threaded_port,
        "floor": floor_port,
        "metrics": server.observability.port,
    }
    write_ready_file(ready_file, info)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    threaded.stop(0)
    server.stop(0)


SERVERS = ("threaded", "aio", "floor")


class ABServer(ReadyFileProcess):
    """This script's `--serve` mode as a child process; `ports` from its ready file."""

    name = "aio-ab"

    def __init__(self) -> None:
        super().__init__([])
        self.args = [sys.executable, __file__, "--serve", str(self.ready_file)]
        self.ports: dict[str, int] = {}

    def on_ready(self, ready: dict[str, Any]) -> None:
        self.ports = {k: int(v) for k, v in ready.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--hold-s", type=float, default=1.0)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--streams", type=int, default=1, help="per client process")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server, alternating")
    parser.add_argument("--api", choices=["session", "unary"], default="session")
    parser.add_argument(
        "--servers",
        nargs="*",
        choices=SERVERS,
        default=list(SERVERS),
        help="which ports to load (floor: Session only)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    ab = ABServer().start(timeout_s=60)
    runs: list[dict[str, Any]] = []
    try:
        ports = ab.ports
        bc.register_all(f"127.0.0.1:{ports['aio']}")
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.client_procs) as pool:
            pool.map(abs, range(args.client_procs))  # start the clients untimed
            for repeat in range(args.repeats):
                servers = [s for s in args.servers if args.api == "session" or s != "floor"]
                order = servers if repeat % 2 == 0 else servers[::-1]
                for server in order:
                    r = bc.bench_grpc_run(
                        args.api,
                        f"127.0.0.1:{ports[server]}",
                        ab.pid,
                        metrics_port=ports["metrics"],
                        rate=args.rate,
                        seconds=args.seconds,
                        hold_s=args.hold_s,
                        procs=args.client_procs,
                        streams=args.streams,
                        max_batch=256,
                        concurrency=0,
                        seed=11 + 100 * repeat + len(runs),
                        pool=pool,
                    )
                    r["server"] = server
                    runs.append(r)
                    print(f"{server:8s}", end=" ")
                    bc._print_run(r)
    finally:
        ab.stop(grace_s=10)
    summary = {}
    for server in SERVERS:
        mine = [r for r in runs if r["server"] == server]
        if not mine:
            continue
        cpu = sorted(r["server_cpu_us_per_request"] for r in mine)
        p99 = sorted(r["p99_ms"] for r in mine)
        summary[server] = {"server_cpu_us_per_request_median": cpu[len(cpu) // 2], "p99_ms": p99}
    print(json.dumps(summary))
    if args.json:
        command = " ".join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])
        results = {"command": command, "machine": bc.machine(), "runs": runs, "summary": summary}
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
