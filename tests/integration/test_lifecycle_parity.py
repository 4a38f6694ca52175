"""The gRPC server and the simulator run one booking lifecycle (policy/lifecycle.py).

One scripted event sequence (batches of Schedules, load reports, read-done, prefill-done,
Complete) is fed to the real `dualpath controller` process over a Session stream, one
SessionRequestBatch per event batch, and to the simulator's own `Lifecycle` (the object
`Simulator` builds for its cluster). Every assignment (engines, read path, decode-side
fraction) and every refusal for lack of capacity must be identical. A control run with
per-request decisions shows the sequence exercises the batch form (it decides differently).
"""

from __future__ import annotations

import queue
import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath.v1 import traffic_controller_pb2_grpc as pb_grpc
from dualpath_controller.client import ControllerClient
from dualpath_controller.convert import PATH_FROM_PROTO, load_report_from_proto
from dualpath_controller.policy import Lifecycle, Request, Role
from dualpath_controller.process import ControllerProcess
from dualpath_sim import constants as C
from dualpath_sim.config import SimConfig, Workload
from dualpath_sim.core import Simulator
from dualpath_sim.hardware import HardwareSpec, engine_name

pytestmark = pytest.mark.timeout(120)

MODEL = "deepseek-v3.2-660b"
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@dataclass(frozen=True)
class Outcome:
    request_id: str
    prefill_engine_id: str
    decode_engine_id: str
    read_path: str
    de_read_fraction: float


@dataclass(frozen=True)
class Step:
    """One batch of events, sent as one Session message."""

    schedules: tuple[Request, ...] = ()
    reports: tuple[pb.LoadReport, ...] = ()
    read_done: tuple[str, ...] = ()
    prefill_done: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()


def simulator() -> Simulator:
    hw = HardwareSpec(
        2,
        2,
        gpus_per_node=2,
        snic_read_bytes_per_s=C.SNIC_READ_BYTES_PER_S / 4,
        snic_write_bytes_per_s=C.SNIC_WRITE_BYTES_PER_S / 4,
    )
    wl = Workload(trace="64k", trajectories=4, agents=4, turn_window=2)
    return Simulator(SimConfig(MODEL, hw, wl, policy="paper", bin_s=5.0))


def script(seed: int, steps: int, bpt: int) -> Iterator[Step]:
    """Requests arrive in batches of 1-8; earlier ones progress (read, prefill, complete)
    in random order; a few load reports. Decode HBM runs out now and then (refusals)."""
    rng = random.Random(seed)
    booked: list[str] = []
    n = 0
    for i in range(steps):
        schedules = []
        for _ in range(rng.randint(1, 8)):
            total = rng.randint(2_000, 120_000)
            cached = rng.randint(0, total - 1) // 64 * 64
            schedules.append(
                Request(
                    f"r{n}",
                    total_tokens=total,
                    cached_tokens=cached,
                    append_tokens=total - cached,
                    expected_output_tokens=rng.randint(50, 3_000),
                    kv_bytes_per_token=bpt,
                )
            )
            n += 1
        rng.shuffle(booked)
        progressing = booked[: rng.randint(0, len(booked) // 2)]
        third = len(progressing) // 3
        complete = tuple(progressing[: third // 2])
        booked = [r for r in booked if r not in complete]
        reports = ()
        if i % 7 == 3:  # an engine's own numbers overwrite what was booked
            reports = (
                pb.LoadReport(
                    engine_id=engine_name(True, 0, 1) if i % 2 else engine_name(False, 1, 0),
                    report_seq=i + 1,
                    unfinished_requests=rng.randint(0, 5),
                    unfinished_tokens=rng.randint(0, 300_000),
                    free_hbm_tokens=rng.randint(0, 400_000),
                    read_queue_length=rng.randint(0, 4),
                    read_queue_tokens=rng.randint(0, 200_000),
                    read_queue_bytes=rng.randint(0, 10**9),
                ),
            )
        yield Step(
            schedules=tuple(schedules),
            reports=reports,
            read_done=tuple(progressing[third : 2 * third]),
            prefill_done=tuple(progressing[2 * third :]),
            complete=complete,
        )
        booked += [r.request_id for r in schedules]  # refused ones: NOT_FOUND / no-ops


def schedule_message(r: Request) -> pb.ScheduleRequest:
    return pb.ScheduleRequest(
        request_id=r.request_id,
        total_tokens=r.total_tokens,
        cached_tokens=r.cached_tokens,
        append_tokens=r.append_tokens,
        expected_output_tokens=r.expected_output_tokens,
        kv_bytes_per_token=r.kv_bytes_per_token,
    )


def run_lifecycle(
    lifecycle: Lifecycle, steps: list[Step], roles: dict[str, int], *, batch: bool = True
) -> tuple[list[Outcome], list[str]]:
    """The simulator's side: the same events, in the same order as the server applies a
    Session message (its operations in order; consecutive Schedules as one batch)."""
    outcomes: list[Outcome] = []
    refused: list[str] = []
    for step in steps:
        for report in step.reports:
            lifecycle.report(load_report_from_proto(report, roles[report.engine_id]))
        for rid in step.read_done:
            lifecycle.read_done(rid)
        for rid in step.prefill_done:
            lifecycle.prefill_done(rid)
        for rid in step.complete:
            lifecycle.release(rid)
        groups = [step.schedules] if batch else [(r,) for r in step.schedules]
        for group in groups:
            result = lifecycle.schedule(group)
            for a in result.assignments:
                outcomes.append(
                    Outcome(
                        a.request_id,
                        a.prefill_engine_id,
                        a.decode_engine_id,
                        a.read_path.value,
                        round(a.de_read_fraction, 9),
                    )
                )
            refused += [r.request_id for r in result.unscheduled]
    return outcomes, refused


def run_server(target: str, steps: list[Step]) -> tuple[list[Outcome], list[str]]:
    """The server's side: per step, its load reports (unary ReportLoad, answered before the
    message goes), then one SessionRequestBatch with the step's operations in script order."""
    outbox: queue.Queue[pb.SessionRequestBatch | None] = queue.Queue()
    outcomes: list[Outcome] = []
    refused: list[str] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.TrafficControllerStub(channel)
        answers = stub.Session(iter(outbox.get, None))
        cid = 0
        for step in steps:
            for report in step.reports:
                assert stub.ReportLoad(report).accepted
            ops = [
                pb.SessionRequest(read_done=pb.ReadDoneRequest(request_id=rid))
                for rid in step.read_done
            ]
            ops += [
                pb.SessionRequest(prefill_done=pb.PrefillDoneRequest(request_id=rid))
                for rid in step.prefill_done
            ]
            ops += [
                pb.SessionRequest(complete=pb.CompleteRequest(request_id=rid))
                for rid in step.complete
            ]
            ops += [pb.SessionRequest(schedule=schedule_message(r)) for r in step.schedules]
            for op in ops:
                cid += 1
                op.correlation_id = cid
            outbox.put(pb.SessionRequestBatch(requests=ops))
            reply = next(answers)
            assert [a.correlation_id for a in reply.responses] == [o.correlation_id for o in ops]
            for op, answer in zip(ops, reply.responses, strict=True):
                kind = op.WhichOneof("operation")
                if answer.WhichOneof("result") == "error":
                    if kind == "schedule":  # no capacity
                        assert answer.error.code == RESOURCE_EXHAUSTED, answer.error
                        refused.append(op.schedule.request_id)
                    else:  # progress of a refused request: never booked
                        assert answer.error.code == NOT_FOUND, answer.error
                        assert getattr(op, kind).request_id in refused
                    continue
                if kind == "schedule":
                    a = answer.schedule.assignment
                    assert not answer.schedule.replayed
                    outcomes.append(
                        Outcome(
                            a.request_id,
                            a.prefill_engine_id,
                            a.decode_engine_id,
                            PATH_FROM_PROTO[a.read_path].value,
                            round(a.de_read_fraction, 9),
                        )
                    )
        outbox.put(None)
    return outcomes, refused


def test_server_and_simulator_make_identical_assignments() -> None:
    sim = simulator()
    lifecycle = sim.lifecycle
    view = lifecycle.view
    roles = {}
    steps = list(script(seed=13, steps=60, bpt=sim.bpt))
    params = dict(sim.policy.params)
    with ControllerProcess(policy="paper", params=params, liveness_timeout_s=3_600) as proc:
        with ControllerClient(proc.target) as client:
            client.wait_ready()
            for engine in sorted(view.engines.values(), key=lambda e: e.engine_id):
                roles[engine.engine_id] = (
                    pb.ENGINE_ROLE_PREFILL if engine.role is Role.PREFILL else pb.ENGINE_ROLE_DECODE
                )
                client.register_engine(
                    engine.engine_id,
                    engine.role,
                    engine.node,
                    group=engine.group,
                    hbm_capacity_tokens=engine.hbm_capacity_tokens,
                    snic_read_bytes_per_s=view.nodes[engine.node].snic_read_bytes_per_s,
                )
        server = run_server(proc.target, steps)
    simulated = run_lifecycle(lifecycle, steps, roles)
    assert len(server[0]) > 100 and server[1], "the script must place and refuse requests"
    assert server[1] == simulated[1]
    assert server[0] == simulated[0]
    # Control: the same events with each request decided on its own (not the batch form)
    # give other assignments, so the comparison above is a real check of the batch form.
    assert run_lifecycle(simulator().lifecycle, steps, roles, batch=False)[0] != simulated[0]
