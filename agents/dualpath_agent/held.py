"""Buffer space a request keeps between calls, one typed record per kind, and the table
that holds them until Release, a Commit/Merge that consumes them, or their lease ends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from dualpath_agent.buffer import Region
from dualpath_agent.layout import BlockLayout, RegionLayout
from dualpath_agent.plan import BlockPlan
from dualpath_agent.staging import Staged

log = logging.getLogger(__name__)


@dataclass
class Held:
    """Base of the held records: `kind` names it in Release replies and logs."""

    kind: ClassVar[str] = ""
    expires_at: float

    def release(self) -> int:
        """Free the buffer space; returns the bytes freed."""
        raise NotImplementedError


@dataclass
class HeldRegion(Held):
    """A request region in the device tier (read back by ReadRegion)."""

    region: Region
    region_layout: RegionLayout

    def release(self) -> int:
        self.region.release()
        return self.region.nbytes


@dataclass
class HeldLoad(HeldRegion):
    """A Load kept for its Commit (release_after_load=false): the region and what the
    Commit needs to send it on to the decode side."""

    kind: ClassVar[str] = "load"
    layout: BlockLayout
    blocks: list[BlockPlan]
    crcs: dict[bytes, Sequence[int]]
    decode_endpoint: str
    missed_reserved: int
    prefix_tokens: int


@dataclass
class HeldMerged(HeldRegion):
    """The region a Merge assembled (prefix + missed tokens) on the decode side."""

    kind: ClassVar[str] = "merged"


@dataclass
class HeldStaged(Held):
    """The block groups a ServeLayers read (keep_for_merge), kept for the Merge."""

    kind: ClassVar[str] = "staged"
    staged: list[Staged]

    def release(self) -> int:
        return sum(st.release() for st in self.staged)


H = TypeVar("H", bound=Held)


class HeldTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Held] = {}

    def put(self, request_id: str, held: Held) -> None:
        with self._lock:
            old = self._items.pop((request_id, held.kind), None)
            self._items[(request_id, held.kind)] = held
        if old is not None:
            log.warning("replaced held buffer", extra={"request_id": request_id, "kind": held.kind})
            old.release()

    def get(self, request_id: str, kind: type[H]) -> H | None:
        with self._lock:
            held = self._items.get((request_id, kind.kind))
        return held if isinstance(held, kind) else None

    def pop(self, request_id: str, kind: type[H]) -> H | None:
        with self._lock:
            held = self._items.get((request_id, kind.kind))
            if not isinstance(held, kind):
                return None
            del self._items[(request_id, kind.kind)]
        return held

    def release_all_of(self, request_id: str) -> tuple[list[str], int]:
        with self._lock:
            keys = [k for k in self._items if k[0] == request_id]
            held = [self._items.pop(k) for k in keys]
        return [h.kind for h in held], sum(h.release() for h in held)

    def expire(self, now: float) -> list[tuple[str, str]]:
        with self._lock:
            keys = [k for k, h in self._items.items() if h.expires_at <= now]
            held = [self._items.pop(k) for k in keys]
        for h in held:
            h.release()
        return keys

    def clear(self) -> None:
        with self._lock:
            held = list(self._items.values())
            self._items.clear()
        for h in held:
            h.release()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
