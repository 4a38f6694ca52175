"""Cluster hardware: nodes of g GPUs, each GPU one engine; bandwidth-limited links.

A `Link` is a FIFO bandwidth server (one transfer at a time at full rate, in the order they
were requested): storage NIC reads and writes per node, host DRAM per node, and one compute
NIC per GPU. A transfer that crosses several links reserves each of them from the moment it
is ready and ends when the slowest is done (each link moves the bytes at its own rate; the
bytes pipeline through them). Reservation is analytic: no event per transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dualpath_sim import constants as C


@dataclass(frozen=True)
class HardwareSpec:
    prefill_nodes: int
    decode_nodes: int
    gpus_per_node: int = C.GPUS_PER_NODE
    snic_read_bytes_per_s: float = C.SNIC_READ_BYTES_PER_S
    snic_write_bytes_per_s: float = C.SNIC_WRITE_BYTES_PER_S
    cnic_bytes_per_s: float = C.CNIC_BYTES_PER_S
    dram_bytes_per_s: float = C.DRAM_BYTES_PER_S

    def __post_init__(self) -> None:
        for name in ("prefill_nodes", "decode_nodes", "gpus_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"hardware.{name} must be a positive integer, got {value!r}")
        for name in (
            "snic_read_bytes_per_s",
            "snic_write_bytes_per_s",
            "cnic_bytes_per_s",
            "dram_bytes_per_s",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"hardware.{name} must be > 0, got {value!r}")

    @property
    def label(self) -> str:
        return f"{self.prefill_nodes}P{self.decode_nodes}D"


class Link:
    """A FIFO bandwidth server. `bin_s` > 0 records bytes per time bin (for plots)."""

    __slots__ = ("bin_s", "bins", "busy_s", "bytes_per_s", "bytes_total", "free_at", "name")

    def __init__(self, name: str, bytes_per_s: float, bin_s: float = 0.0) -> None:
        self.name = name
        self.bytes_per_s = bytes_per_s
        self.free_at = 0.0
        self.bytes_total = 0
        self.busy_s = 0.0
        self.bin_s = bin_s
        self.bins: list[float] = []

    def reserve(self, ready: float, nbytes: int) -> float:
        """Queue `nbytes` behind earlier transfers, starting no earlier than `ready`; returns
        the time the last byte is through."""
        if nbytes <= 0:
            return ready
        start = ready if ready > self.free_at else self.free_at
        duration = nbytes / self.bytes_per_s
        end = start + duration
        self.free_at = end
        self.bytes_total += nbytes
        self.busy_s += duration
        if self.bin_s > 0.0:
            self._record(start, end, nbytes)
        return end

    def _record(self, start: float, end: float, nbytes: int) -> None:
        width = self.bin_s
        first = int(start / width)
        last = int(end / width)
        bins = self.bins
        if last >= len(bins):
            bins.extend([0.0] * (last + 1 - len(bins)))
        if first == last or end <= start:
            bins[first] += nbytes
            return
        rate = nbytes / (end - start)
        bins[first] += rate * ((first + 1) * width - start)
        for b in range(first + 1, last):
            bins[b] += rate * width
        bins[last] += rate * (end - last * width)


def free_link(name: str) -> Link:
    """A link with no cost (the Oracle's I/O)."""
    return Link(name, math.inf)


@dataclass
class Node:
    name: str
    prefill: bool
    snic_read: Link
    snic_write: Link
    dram: Link
    engines: list[str] = field(default_factory=list)


def node_name(prefill: bool, index: int) -> str:
    return f"{'p' if prefill else 'd'}node{index:03d}"


def engine_name(prefill: bool, node_index: int, gpu: int) -> str:
    return f"{'pe' if prefill else 'de'}{node_index:03d}-{gpu}"
