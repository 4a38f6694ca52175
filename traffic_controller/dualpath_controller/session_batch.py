"""How the controller's Session handler walks one SessionRequestBatch: runs of consecutive
Schedules grouped (decided together, the policy's batch form) and every other operation on
its own, an answer slot per operation in the requests' order; and an answer that waits for
the batching window before it is written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dualpath.v1 import traffic_controller_pb2 as pb

from dualpath_controller.state import ControllerError


@dataclass
class Waiting:
    """Schedules of one call (or one Session run) waiting for the batching window."""

    messages: list[pb.ScheduleRequest]
    outs: list[pb.ScheduleResponse | None]
    done: asyncio.Future[list[pb.ScheduleResponse | ControllerError]]


@dataclass
class Prepared:
    """A Session answer whose Schedules wait for the batching window."""

    out: pb.SessionResponseBatch
    waits: list[tuple[list[pb.SessionResponse], asyncio.Future[Any]]]
    fill: Callable[[list[pb.SessionResponse], list[Any]], None]

    async def finished(self) -> pb.SessionResponseBatch:
        for run, done in self.waits:
            self.fill(run, await done)
        return self.out


@dataclass
class ScheduleRun:
    """Consecutive Schedules of a Session batch: decided together, in the policy's batch form."""

    messages: list[pb.ScheduleRequest] = field(default_factory=list)
    answers: list[pb.SessionResponse] = field(default_factory=list)


@dataclass
class OtherOperation:
    item: pb.SessionRequest
    kind: str | None  # None: no operation set
    answer: pb.SessionResponse


def steps(
    batch: pb.SessionRequestBatch, out: pb.SessionResponseBatch
) -> Iterator[ScheduleRun | OtherOperation]:
    """A batch's operations in order, runs of Schedules grouped; an answer slot is added to
    `out` for each (answers keep the requests' order)."""
    run = ScheduleRun()
    for item in batch.requests:
        kind = item.WhichOneof("operation")
        answer = out.responses.add(correlation_id=item.correlation_id)
        if kind == "schedule":
            run.messages.append(item.schedule)
            run.answers.append(answer)
            continue
        if run.messages:
            yield run
            run = ScheduleRun()
        yield OtherOperation(item, kind, answer)
    if run.messages:
        yield run


async def write_prepared(context: Any, outbox: asyncio.Queue[Prepared | None]) -> None:
    while (prepared := await outbox.get()) is not None:
        await context.write(await prepared.finished())


def answer_error(answer: pb.SessionResponse, kind: str, exc: ControllerError) -> None:
    answer.ClearField(kind)  # a half-written result must not leak out
    answer.error.code = exc.code.value[0]
    answer.error.message = exc.message
