"""The node's KV block store: a directory of Full Block files addressed by block hash.

- Layout: ROOT/ab/abcdef....blk (256-way fan-out by the first hash byte), one file per block
  in the format of `blockfile` (header page with per-layer CRC32C, then padded layers).
- Persisting is atomic: write a temp file in the same directory, fsync it, rename it over
  the final name, fsync the directory. A crash leaves either no block or a whole one; temp
  files of dead writers are removed when the index is rebuilt.
- Every read is verified against the CRCs; a block that fails is quarantined (renamed to
  *.corrupt, out of the index) so it is never served again, and the error names it.
- The index is rebuilt from the directory on start. Several agents may share one directory
  (emulating a distributed store such as 3FS): a miss probes the disk, `rescan()` picks up
  blocks written by others, and readers hold open file descriptors, so a block unlinked
  by another agent's eviction stays readable to a read already in progress.
- Capacity: least-recently-used blocks are evicted to make room; a pinned block (one being
  read) is never evicted. When nothing can be evicted the write fails with StoreFull.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualpath_agent.blockfile import (
    BlockFormatError,
    BlockHeader,
    ChecksumMismatch,
    build_image,
    decode_header,
    verify_layer,
)
from dualpath_agent.blockhash import HASH_BYTES
from dualpath_agent.layout import HEADER_BYTES, BlockLayout

log = logging.getLogger(__name__)

SUFFIX = ".blk"
TMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"
_HOST = socket.gethostname()


class StoreError(Exception):
    """Base of the store's errors."""


class BlockNotFound(StoreError):
    def __init__(self, missing: Sequence[bytes]) -> None:
        shown = ", ".join(h.hex() for h in missing[:4])
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        super().__init__(f"{len(missing)} block(s) not in the store: {shown}{more}")
        self.missing = list(missing)


class StoreFull(StoreError):
    """No room for a block even after evicting every unpinned block (or ENOSPC)."""


class BlockCorrupt(StoreError):
    """A stored block failed verification; it has been quarantined."""

    def __init__(self, block_hash: bytes, reason: str) -> None:
        super().__init__(f"block {block_hash.hex()} is corrupt ({reason}); quarantined")
        self.block_hash = block_hash


class LayoutMismatch(StoreError):
    pass


@dataclass
class StoreFaults:
    """Debug-only fault injection (set from the environment by the CLI, logged loudly).

    pause_phase: "mid-write" | "before-rename" | "after-rename": when a persist reaches
    that point the store creates `pause_marker` and sleeps, so a test can SIGKILL it there.
    enospc_after_bytes: fail writes with a real OSError(ENOSPC) once this many bytes were
    written by this process (exercises the same except-path as a full disk).
    """

    pause_phase: str = ""
    pause_marker: str = ""
    enospc_after_bytes: int = -1
    _written: int = 0

    def maybe_pause(self, phase: str, block_hash: bytes) -> None:
        if self.pause_phase != phase:
            return
        log.warning("debug: persist paused", extra={"phase": phase, "block": block_hash.hex()})
        if self.pause_marker:
            Path(self.pause_marker).write_text(f"{phase} {block_hash.hex()} {os.getpid()}\n")
        time.sleep(3600)

    def account_write(self, nbytes: int) -> None:
        if self.enospc_after_bytes < 0:
            return
        self._written += nbytes
        if self._written > self.enospc_after_bytes:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


@dataclass
class StoredBlock:
    block_hash: bytes
    path: Path
    file_bytes: int
    header: BlockHeader | None = None


@dataclass
class StoreStats:
    blocks: int
    bytes_used: int
    capacity_bytes: int
    evictions: int
    checksum_failures: int
    pinned_blocks: int


@dataclass
class RebuildReport:
    blocks: int = 0
    bytes: int = 0
    temp_removed: int = 0
    ignored: list[str] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview | bytes, faults: StoreFaults) -> None:
    view = memoryview(data).cast("B")
    while view:
        faults.account_write(len(view))
        written = os.write(fd, view)
        view = view[written:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlockStore:
    def __init__(
        self,
        root: Path | str,
        capacity_bytes: int = 0,
        faults: StoreFaults | None = None,
        stale_temp_age_s: float = 3600.0,
    ) -> None:
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.faults = faults or StoreFaults()
        self._stale_temp_age_s = stale_temp_age_s
        self._lock = threading.Lock()
        self._index: OrderedDict[bytes, StoredBlock] = OrderedDict()  # oldest first
        self._pins: dict[bytes, int] = {}
        self._bytes_used = 0
        self._reserved = 0
        self.evictions = 0
        self.checksum_failures = 0
        self.root.mkdir(parents=True, exist_ok=True)

    # ----- naming -------------------------------------------------------------------------
    def path_for(self, block_hash: bytes) -> Path:
        name = block_hash.hex()
        return self.root / name[:2] / (name + SUFFIX)

    # ----- index ----------------------------------------------------------------------------
    def rebuild(self) -> RebuildReport:
        """Forget the in-memory index and rebuild it from the directory."""
        report = RebuildReport()
        found: list[tuple[float, StoredBlock]] = []
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for entry in os.scandir(sub):
                self._classify(Path(entry.path), entry, report, found)
        found.sort(key=lambda item: item[0])
        with self._lock:
            self._index = OrderedDict((b.block_hash, b) for _, b in found)
            self._bytes_used = sum(b.file_bytes for _, b in found)
        report.blocks, report.bytes = len(found), self._bytes_used
        log.info(
            "block index rebuilt",
            extra={
                "blocks": report.blocks,
                "bytes": report.bytes,
                "temp_removed": report.temp_removed,
                "ignored": len(report.ignored),
            },
        )
        return report

    def _classify(
        self,
        path: Path,
        entry: os.DirEntry[str],
        report: RebuildReport,
        found: list[tuple[float, StoredBlock]],
    ) -> None:
        name = path.name
        if name.endswith(TMP_SUFFIX):
            if self._temp_is_stale(name, entry):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                report.temp_removed += 1
            return
        if not name.endswith(SUFFIX):
            report.ignored.append(name)
            return
        try:
            block_hash = bytes.fromhex(name[: -len(SUFFIX)])
        except ValueError:
            report.ignored.append(name)
            return
        if len(block_hash) != HASH_BYTES:
            report.ignored.append(name)
            return
        st = entry.stat()
        found.append((st.st_mtime, StoredBlock(block_hash, path, st.st_size)))

    def _temp_is_stale(self, name: str, entry: os.DirEntry[str]) -> bool:
        # .<hash>.<host>.<pid>.<rand>.tmp: a temp of a dead local writer is garbage at once;
        # others (another host sharing the directory) only once they are old.
        parts = name.split(".")
        if len(parts) >= 6 and parts[2] == _HOST and parts[3].isdigit():
            pid = int(parts[3])
            if pid == os.getpid() or not _pid_alive(pid):
                return True
        try:
            age = time.time() - entry.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > self._stale_temp_age_s

    def rescan(self) -> int:
        """Pick up blocks written by other agents sharing the directory and drop vanished
        ones; returns the number of changes."""
        on_disk: dict[bytes, StoredBlock] = {}
        report = RebuildReport()
        found: list[tuple[float, StoredBlock]] = []
        for sub in (p for p in self.root.iterdir() if p.is_dir()):
            for entry in os.scandir(sub):
                if entry.name.endswith(SUFFIX):
                    self._classify(Path(entry.path), entry, report, found)
        on_disk = {b.block_hash: b for _, b in found}
        changes = 0
        with self._lock:
            for block_hash in list(self._index):
                if block_hash not in on_disk and not self._pins.get(block_hash):
                    self._bytes_used -= self._index.pop(block_hash).file_bytes
                    changes += 1
            for block_hash, block in on_disk.items():
                if block_hash not in self._index:
                    self._index[block_hash] = block
                    self._index.move_to_end(block_hash, last=False)  # unknown age: evict first
                    self._bytes_used += block.file_bytes
                    changes += 1
        return changes

    def _probe_locked(self, block_hash: bytes) -> StoredBlock | None:
        path = self.path_for(block_hash)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        block = StoredBlock(block_hash, path, size)
        self._index[block_hash] = block
        self._bytes_used += size
        return block

    def _get_locked(self, block_hash: bytes) -> StoredBlock | None:
        block = self._index.get(block_hash)
        if block is None:
            block = self._probe_locked(block_hash)
        if block is not None:
            self._index.move_to_end(block_hash)
        return block

    def contains(self, block_hash: bytes) -> bool:
        with self._lock:
            return self._get_locked(block_hash) is not None

    def lookup(self, hashes: Iterable[bytes]) -> list[bool]:
        with self._lock:
            return [self._get_locked(h) is not None for h in hashes]

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                blocks=len(self._index),
                bytes_used=self._bytes_used,
                capacity_bytes=self.capacity_bytes,
                evictions=self.evictions,
                checksum_failures=self.checksum_failures,
                pinned_blocks=sum(1 for n in self._pins.values() if n),
            )

    # ----- pinning --------------------------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self, hashes: Sequence[bytes]) -> Iterator[list[StoredBlock]]:
        """Pin blocks for reading (never evicted while pinned); raises BlockNotFound."""
        with self._lock:
            blocks = [self._get_locked(h) for h in hashes]
            missing = [h for h, b in zip(hashes, blocks, strict=True) if b is None]
            if missing:
                raise BlockNotFound(missing)
            for h in hashes:
                self._pins[h] = self._pins.get(h, 0) + 1
        try:
            yield [b for b in blocks if b is not None]
        finally:
            with self._lock:
                for h in hashes:
                    left = self._pins.get(h, 0) - 1
                    if left > 0:
                        self._pins[h] = left
                    else:
                        self._pins.pop(h, None)

    # ----- corruption -----------------------------------------------------------------------
    def quarantine(self, block_hash: bytes, reason: str) -> BlockCorrupt:
        """Take a corrupt block out of service (renamed to *.corrupt) and count it."""
        path = self.path_for(block_hash)
        with self._lock:
            self.checksum_failures += 1
            block = self._index.pop(block_hash, None)
            if block is not None:
                self._bytes_used -= block.file_bytes
        target = path.with_name(f"{path.name}.{int(time.time() * 1000)}{CORRUPT_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, target)
        log.error("block quarantined", extra={"block": block_hash.hex(), "reason": reason})
        return BlockCorrupt(block_hash, reason)

    # ----- reads ----------------------------------------------------------------------------
    def read_header(self, block_hash: bytes) -> BlockHeader:
        with self.pinned([block_hash]) as (block,):
            return self._read_header(block)

    def _read_header(self, block: StoredBlock, fd: int | None = None) -> BlockHeader:
        own = fd is None
        if own:
            fd = os.open(block.path, os.O_RDONLY)
        assert fd is not None
        try:
            page = os.pread(fd, HEADER_BYTES, 0)
            size = os.fstat(fd).st_size
        finally:
            if own:
                os.close(fd)
        try:
            header = decode_header(page)
        except BlockFormatError as exc:
            raise self.quarantine(block.block_hash, str(exc)) from exc
        if header.block_hash != block.block_hash:
            raise self.quarantine(block.block_hash, "header names another block")
        if size != header.file_bytes:
            raise self.quarantine(
                block.block_hash, f"file is {size} bytes, header says {header.file_bytes}"
            )
        block.header = header
        return header

    def read_block(
        self, block_hash: bytes, layer: int | None = None, layout: BlockLayout | None = None
    ) -> tuple[BlockHeader, bytes]:
        """Verified dense bytes of a block ([layers, tokens, bytes]) or of one Layer Block,
        read with pread (the tooling path; bulk loads go through the storage transport)."""
        with self.pinned([block_hash]) as (block,):
            try:
                fd = os.open(block.path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise BlockNotFound([block_hash]) from exc
            try:
                header = self._read_header(block, fd)
                if layout is not None and not header.matches(layout):
                    raise LayoutMismatch(
                        f"block {block_hash.hex()} is stored as {header.layers} layers x "
                        f"{header.tokens} tokens x {header.bytes_per_token_layer} bytes, "
                        f"request layout is {layout}"
                    )
                if layer is not None and not 0 <= layer < header.layers:
                    raise ValueError(f"layer {layer} out of range 0..{header.layers - 1}")
                wanted = range(header.layers) if layer is None else [layer]
                parts = []
                for i in wanted:
                    data = os.pread(fd, header.layer_bytes, header.layer_offset(i))
                    try:
                        if len(data) != header.layer_bytes:
                            raise BlockFormatError(f"layer {i} truncated")
                        verify_layer(header, i, data)
                    except (BlockFormatError, ChecksumMismatch) as exc:
                        raise self.quarantine(block_hash, str(exc)) from exc
                    parts.append(data)
            finally:
                os.close(fd)
        return header, b"".join(parts)

    # ----- writes ---------------------------------------------------------------------------
    def put(
        self,
        block_hash: bytes,
        parent_hash: bytes,
        layout: BlockLayout,
        tokens: int,
        data: memoryview | bytes,
    ) -> bool:
        """Persist a block atomically; False when it was already present (content-addressed)."""
        if self.contains(block_hash):
            return False
        header, pieces = build_image(block_hash, parent_hash, layout, tokens, memoryview(data))
        size = header.file_bytes
        self._reserve(size)
        try:
            self._persist(block_hash, pieces)
        except BaseException:
            with self._lock:
                self._reserved -= size
            raise
        with self._lock:
            self._reserved -= size
            if block_hash not in self._index:
                self._index[block_hash] = StoredBlock(block_hash, self.path_for(block_hash), size)
                self._bytes_used += size
            self._index[block_hash].header = header
        return True

    def _reserve(self, size: int) -> None:
        victims: list[StoredBlock] = []
        with self._lock:
            if self.capacity_bytes:
                if size > self.capacity_bytes:
                    raise StoreFull(
                        f"block of {size} bytes exceeds the store capacity "
                        f"({self.capacity_bytes} bytes)"
                    )
                for block_hash in list(self._index):
                    if self._bytes_used + self._reserved + size <= self.capacity_bytes:
                        break
                    if self._pins.get(block_hash):
                        continue  # being read: never evicted
                    block = self._index.pop(block_hash)
                    self._bytes_used -= block.file_bytes
                    victims.append(block)
                if self._bytes_used + self._reserved + size > self.capacity_bytes:
                    self._restore_locked(victims)
                    raise StoreFull(
                        f"store full: {self._bytes_used} of {self.capacity_bytes} bytes used "
                        f"and the rest is pinned by reads in progress"
                    )
            self._reserved += size
            self.evictions += len(victims)
        for block in victims:
            with contextlib.suppress(FileNotFoundError):
                block.path.unlink()
            log.info("block evicted", extra={"block": block.block_hash.hex()})

    def _restore_locked(self, victims: list[StoredBlock]) -> None:
        for block in victims:
            self._index[block.block_hash] = block
            self._index.move_to_end(block.block_hash, last=False)
            self._bytes_used += block.file_bytes

    def _persist(self, block_hash: bytes, pieces: list[memoryview | bytes]) -> None:
        final = self.path_for(block_hash)
        directory = final.parent
        if not directory.exists():
            directory.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        tmp = directory / f".{block_hash.hex()}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                half = max(1, len(pieces) // 2)
                for i, piece in enumerate(pieces):
                    if i == half:
                        self.faults.maybe_pause("mid-write", block_hash)
                    _write_all(fd, piece, self.faults)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.faults.maybe_pause("before-rename", block_hash)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"disk full while writing block {block_hash.hex()}: {exc}") from exc
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self.faults.maybe_pause("after-rename", block_hash)
        _fsync_dir(directory)

    def delete(self, block_hash: bytes) -> bool:
        with self._lock:
            if self._pins.get(block_hash):
                raise StoreError(f"block {block_hash.hex()} is being read")
            block = self._index.pop(block_hash, None)
            if block is not None:
                self._bytes_used -= block.file_bytes
        path = self.path_for(block_hash)
        try:
            path.unlink()
        except FileNotFoundError:
            return block is not None
        return True
