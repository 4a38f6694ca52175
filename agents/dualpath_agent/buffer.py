"""Memory tiers: page-aligned registered buffers and an allocator that cannot leak.

- `Arena` is the pure allocator: first-fit over a sorted free list, page-aligned offsets,
  neighbours merged on free.
- `MemoryPool` wraps one arena around real memory. `allocate()` blocks (FIFO-fair) until
  space is free, the deadline passes or the caller is cancelled, and returns a `Region`: a
  context manager that frees itself on exit, so an exception can never leak buffer space.
- Tiers: the host tier is an anonymous mmap (page aligned; mlock'ed when the limit allows),
  the PE/DE buffer of the paper. The device tier is GPU memory (cupy or torch, detected at
  runtime, registered as VRAM) when a GPU exists, otherwise another host mmap registered
  as DRAM. The agent's code path is the same either way: it only sees a pool with a base
  address, a memory type and copy functions.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import logging
import mmap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualpath_agent.layout import PAGE, align_up

log = logging.getLogger(__name__)


class OutOfBuffer(Exception):
    """The request can never fit, or no space freed up before the deadline."""


class Cancelled(Exception):
    """The operation was cancelled (client gone, shutdown, peer failure)."""


class Arena:
    """First-fit allocator over [0, size); all offsets and sizes are page multiples."""

    def __init__(self, size: int, align: int = PAGE) -> None:
        self.size = size - size % align
        self.align = align
        self._free: list[tuple[int, int]] = [(0, self.size)] if self.size else []
        self._used: dict[int, int] = {}

    @property
    def free_bytes(self) -> int:
        return sum(length for _, length in self._free)

    @property
    def used_bytes(self) -> int:
        return sum(self._used.values())

    @property
    def largest_free(self) -> int:
        return max((length for _, length in self._free), default=0)

    def try_alloc(self, nbytes: int) -> int | None:
        need = align_up(max(nbytes, 1), self.align)
        for i, (start, length) in enumerate(self._free):
            if length >= need:
                if length == need:
                    del self._free[i]
                else:
                    self._free[i] = (start + need, length - need)
                self._used[start] = need
                return start
        return None

    def free(self, offset: int) -> None:
        length = self._used.pop(offset)
        i = bisect.bisect_left(self._free, (offset, 0))
        self._free.insert(i, (offset, length))
        # merge with the right neighbour, then the left one
        if i + 1 < len(self._free) and offset + length == self._free[i + 1][0]:
            self._free[i] = (offset, length + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:
            prev = self._free[i - 1]
            self._free[i - 1] = (prev[0], prev[1] + self._free[i][1])
            del self._free[i]


@dataclass
class Region:
    """A piece of a pool. Use as a context manager, or call release() (idempotent)."""

    pool: MemoryPool
    offset: int
    nbytes: int
    _released: bool = False

    @property
    def address(self) -> int:
        return self.pool.base_address + self.offset

    def view(self) -> memoryview:
        """Host-visible bytes of the region (host tier, or the DRAM stand-in device tier)."""
        return self.pool.host_view(self.offset, self.nbytes)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._free(self.offset)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemoryPool:
    """A registered memory tier with a blocking, leak-proof allocator."""

    def __init__(
        self,
        name: str,
        base_address: int,
        size: int,
        mem_type: str,
        host_view: Callable[[int, int], memoryview] | None,
        keepalive: Any = None,
    ) -> None:
        self.name = name
        self.base_address = base_address
        self.mem_type = mem_type  # "DRAM" or "VRAM" (NIXL memory types)
        self._host_view = host_view
        self._keepalive = keepalive
        self._arena = Arena(size)
        self.size = self._arena.size
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._queue: list[int] = []  # FIFO of waiting tickets
        self.waiters = 0

    @property
    def free_bytes(self) -> int:
        with self._cond:
            return self._arena.free_bytes

    def host_view(self, offset: int, nbytes: int) -> memoryview:
        if self._host_view is None:
            raise TypeError(f"{self.name} is {self.mem_type}; it has no host view")
        return self._host_view(offset, nbytes)

    def contains(self, address: int, nbytes: int) -> bool:
        return self.base_address <= address and address + nbytes <= self.base_address + self.size

    def allocate(
        self,
        nbytes: int,
        timeout_s: float = 30.0,
        cancelled: threading.Event | None = None,
    ) -> Region:
        need = align_up(max(nbytes, 1))
        if need > self.size:
            raise OutOfBuffer(
                f"{self.name}: {nbytes} bytes requested, the whole buffer is {self.size} bytes"
            )
        deadline = time.monotonic() + timeout_s
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            self.waiters += 1
            try:
                while True:
                    if self._queue[0] == ticket:
                        offset = self._arena.try_alloc(need)
                        if offset is not None:
                            return Region(self, offset, need)
                    if cancelled is not None and cancelled.is_set():
                        raise Cancelled(f"{self.name}: allocation cancelled")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise OutOfBuffer(
                            f"{self.name}: no {need} bytes free within {timeout_s:.1f}s "
                            f"({self._arena.free_bytes} free of {self.size})"
                        )
                    self._cond.wait(min(left, 0.05))
            finally:
                self._queue.remove(ticket)
                self.waiters -= 1
                self._cond.notify_all()

    def _free(self, offset: int) -> None:
        with self._cond:
            self._arena.free(offset)
            self._cond.notify_all()


def copy_bytes(dst_address: int, src_address: int, nbytes: int) -> None:
    """Host memcpy; ctypes releases the GIL for the copy."""
    ctypes.memmove(dst_address, src_address, nbytes)


class HostBuffer:
    """Anonymous, page-aligned host memory (the PE/DE buffer)."""

    def __init__(self, size: int, lock_pages: bool = True) -> None:
        self.size = align_up(size)
        # Faulted in now (MAP_POPULATE), not by the first transfer that lands on a page:
        # a cross-process copy into untouched pages runs at a fraction of the speed.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        self._mmap = mmap.mmap(-1, self.size, flags=flags)
        self._view = memoryview(self._mmap)
        buf = (ctypes.c_char * self.size).from_buffer(self._mmap)
        self.address = ctypes.addressof(buf)
        del buf  # the address stays valid as long as the mmap lives
        self.locked = lock_pages and self._mlock()

    def _mlock(self) -> bool:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.mlock(ctypes.c_void_p(self.address), ctypes.c_size_t(self.size)) == 0
        if not ok:
            log.info("host buffer not mlock'ed (RLIMIT_MEMLOCK too low); pages may be swapped")
        return bool(ok)

    def view(self, offset: int, nbytes: int) -> memoryview:
        return self._view[offset : offset + nbytes]

    def pool(self, name: str) -> MemoryPool:
        return MemoryPool(name, self.address, self.size, "DRAM", self.view, keepalive=self)


@dataclass
class DeviceInfo:
    tier: str  # "VRAM" or "DRAM"
    library: str  # "cupy", "torch" or "none"
    detail: str


class DeviceBuffer:
    """GPU memory when a GPU and cupy/torch exist, else host DRAM; detected at runtime."""

    def __init__(self, size: int, mode: str = "auto") -> None:
        self.size = align_up(size)
        self._tensor: Any = None
        self._host: HostBuffer | None = None
        self._copy_h2d: Callable[[int, int, int], None] = copy_bytes
        self._copy_d2h: Callable[[int, int, int], None] = copy_bytes
        self._gpu_problems: list[str] = []
        info = self._try_gpu() if mode in ("auto", "gpu") else None
        if info is None:
            why = "; ".join(self._gpu_problems) or f"--device {mode}"
            if mode == "gpu":
                raise RuntimeError(f"--device gpu was asked for, but no GPU is usable ({why})")
            self._host = HostBuffer(self.size, lock_pages=False)
            self.address = self._host.address
            info = DeviceInfo("DRAM", "none", f"device tier is host DRAM ({why})")
            # The tier in use is in Stat, the ready line and metrics; say why here too.
            log.info("device tier is host DRAM", extra={"reason": why})
        self.info = info

    def _try_gpu(self) -> DeviceInfo | None:
        try:
            import cupy  # type: ignore[import-not-found]

            if cupy.cuda.runtime.getDeviceCount() > 0:
                self._tensor = cupy.cuda.alloc(self.size)
                self.address = int(self._tensor.ptr)
                rt = cupy.cuda.runtime
                self._copy_h2d = lambda d, s, n: rt.memcpy(d, s, n, rt.memcpyHostToDevice)
                self._copy_d2h = lambda d, s, n: rt.memcpy(d, s, n, rt.memcpyDeviceToHost)
                return DeviceInfo("VRAM", "cupy", f"cupy, device {rt.getDevice()}")
            self._gpu_problems.append("cupy: no CUDA device")
        except Exception as exc:  # no cupy, no driver, no device
            self._gpu_problems.append(f"cupy: {exc}")
        try:
            import torch  # type: ignore[import-not-found]

            if torch.cuda.is_available():
                self._tensor = torch.empty(self.size, dtype=torch.uint8, device="cuda")
                self.address = int(self._tensor.data_ptr())
                cudart = torch.cuda.cudart()
                self._copy_h2d = lambda d, s, n: cudart.cudaMemcpy(d, s, n, 1)
                self._copy_d2h = lambda d, s, n: cudart.cudaMemcpy(d, s, n, 2)
                name = torch.cuda.get_device_name(0)
                return DeviceInfo("VRAM", "torch", f"torch, {name}")
            self._gpu_problems.append("torch: CUDA not available")
        except Exception as exc:
            self._gpu_problems.append(f"torch: {exc}")
        return None

    @property
    def mem_type(self) -> str:
        return self.info.tier

    def copy_in(self, dst_address: int, src_address: int, nbytes: int) -> None:
        """Host -> device tier (H2D on a GPU, memcpy otherwise)."""
        self._copy_h2d(dst_address, src_address, nbytes)

    def copy_out(self, dst_address: int, src_address: int, nbytes: int) -> None:
        """Device tier -> host (D2H on a GPU, memcpy otherwise)."""
        self._copy_d2h(dst_address, src_address, nbytes)

    def pool(self, name: str) -> MemoryPool:
        view = self._host.view if self._host is not None else None
        return MemoryPool(name, self.address, self.size, self.mem_type, view, keepalive=self)
