"""The on-disk format of one Full Block, and its verification (pure functions).

Header page (4 KiB), little-endian:
  magic "DPKVBLK1" | version u32 | layers u32 | tokens u32 | bytes_per_token_layer u32 |
  layer_stride u64 | block_hash 16 B | parent_hash 16 B | layer CRC32C x layers |
  header CRC32C (over everything before it) | zero padding
then `layers` Layer Blocks, each padded to layer_stride (a multiple of 4 KiB).

CRC32C per layer, computed in hardware (the crc32c package: SSE4.2 / ARMv8 instructions,
outside the GIL; ~1.8x zlib's CRC32 here): cheap enough to check every byte on every read,
and per layer so a Layer Block read is verified on its own.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c as _crc32c

from dualpath_agent.blockhash import HASH_BYTES
from dualpath_agent.layout import HEADER_BYTES, BlockLayout

MAGIC = b"DPKVBLK1"
VERSION = 1
_FIXED = struct.Struct(f"<8sIIIIQ{HASH_BYTES}s{HASH_BYTES}s")


class BlockFormatError(Exception):
    """The bytes are not a valid block (bad magic, header checksum, or geometry)."""


class ChecksumMismatch(Exception):
    """A layer's bytes do not match the CRC32C recorded when the block was written."""

    def __init__(self, block_hash: bytes, layer: int, expected: int, actual: int) -> None:
        super().__init__(
            f"block {block_hash.hex()} layer {layer}: checksum mismatch "
            f"(expected crc32c {expected:08x}, got {actual:08x})"
        )
        self.block_hash = block_hash
        self.layer = layer


@dataclass(frozen=True)
class BlockHeader:
    block_hash: bytes
    parent_hash: bytes
    layers: int
    tokens: int
    bytes_per_token_layer: int
    layer_stride: int
    layer_crcs: tuple[int, ...]

    @property
    def layer_bytes(self) -> int:
        return self.tokens * self.bytes_per_token_layer

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.layers * self.layer_stride

    def layer_offset(self, layer: int) -> int:
        return HEADER_BYTES + layer * self.layer_stride

    def matches(self, layout: BlockLayout) -> bool:
        return (
            self.layers == layout.layers
            and self.bytes_per_token_layer == layout.bytes_per_token_layer
            and self.tokens <= layout.block_tokens
        )


# Releasing the GIL costs a reacquire, which waits behind other busy threads (gRPC, the
# notification poller): for a Layer Block of a few 10s of KiB (~2 us of CRC) that wait is
# far longer than the CRC itself (measured: 21 GB/s holding it vs 12-14 GB/s releasing it,
# with two other Python threads running). Only large buffers release it.
_GIL_RELEASE_MIN_BYTES = 1 << 20


def _gil_mode(nbytes: int) -> int:
    return 1 if nbytes >= _GIL_RELEASE_MIN_BYTES else 0


def crc32c(data: memoryview | bytes | bytearray) -> int:
    """CRC32C (Castagnoli), in hardware (SSE4.2 / ARMv8 crc32); outside the GIL when large."""
    return int(_crc32c.crc32c(data, gil_release_mode=_gil_mode(len(data))))


@functools.lru_cache(maxsize=64)
def _shift_tables(nbytes: int) -> tuple[tuple[int, ...], ...]:
    """Tables of the GF(2)-linear map M with crc(A || B) = M(crc(A)) ^ crc(B), len(B) = nbytes.

    Continuing a CRC over nbytes zeros is affine in the start value: f(c) = M(c) ^ f(0), so M
    is found from f on the 32 basis values, then tabulated per byte of c."""
    zeros = bytes(nbytes)
    f0 = int(_crc32c.crc32c(zeros, value=0))
    basis = [int(_crc32c.crc32c(zeros, value=1 << bit)) ^ f0 for bit in range(32)]
    tables = []
    for byte in range(4):
        table = []
        for v in range(256):
            m = 0
            for bit in range(8):
                if v >> bit & 1:
                    m ^= basis[byte * 8 + bit]
            table.append(m)
        tables.append(tuple(table))
    return tuple(tables)


def crc32c_concat(parts: Sequence[tuple[int, int]]) -> int:
    """CRC32C of the concatenation of buffers given as (crc32c, length), without their bytes
    (the zlib crc32_combine idea): lets one CRC call check many consecutive Layer Blocks."""
    crc = 0
    for part_crc, nbytes in parts:
        t0, t1, t2, t3 = _shift_tables(nbytes)
        crc = (
            t0[crc & 0xFF] ^ t1[crc >> 8 & 0xFF] ^ t2[crc >> 16 & 0xFF] ^ t3[crc >> 24]
        ) ^ part_crc
    return crc


def encode_header(header: BlockHeader) -> bytes:
    fixed = _FIXED.pack(
        MAGIC,
        VERSION,
        header.layers,
        header.tokens,
        header.bytes_per_token_layer,
        header.layer_stride,
        header.block_hash,
        header.parent_hash.ljust(HASH_BYTES, b"\0"),
    )
    body = fixed + struct.pack(f"<{header.layers}I", *header.layer_crcs)
    body += struct.pack("<I", crc32c(body))
    if len(body) > HEADER_BYTES:
        raise BlockFormatError(f"too many layers for one header page: {header.layers}")
    return body.ljust(HEADER_BYTES, b"\0")


def decode_header(page: memoryview | bytes) -> BlockHeader:
    """Parse and check a header page; raises BlockFormatError when it is not valid."""
    page = memoryview(page)
    if len(page) < _FIXED.size:
        raise BlockFormatError(f"header truncated ({len(page)} bytes)")
    magic, version, layers, tokens, bpt, stride, bhash, parent = _FIXED.unpack_from(page, 0)
    if magic != MAGIC:
        raise BlockFormatError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise BlockFormatError(f"unsupported block format version {version}")
    end = _FIXED.size + 4 * layers
    if layers == 0 or end + 4 > min(len(page), HEADER_BYTES):
        raise BlockFormatError(f"bad layer count {layers}")
    (stored_crc,) = struct.unpack_from("<I", page, end)
    if crc32c(page[:end]) != stored_crc:
        raise BlockFormatError("header checksum mismatch")
    if stride < tokens * bpt or stride % 4096:
        raise BlockFormatError(f"bad layer stride {stride} for {tokens} tokens x {bpt} bytes")
    crcs = struct.unpack_from(f"<{layers}I", page, _FIXED.size)
    parent_hash = b"" if parent == b"\0" * HASH_BYTES else bytes(parent)
    return BlockHeader(bytes(bhash), parent_hash, layers, tokens, bpt, stride, tuple(crcs))


def build_image(
    block_hash: bytes, parent_hash: bytes, layout: BlockLayout, tokens: int, data: memoryview
) -> tuple[BlockHeader, list[memoryview | bytes]]:
    """File image of a block from its dense [layers, tokens, bytes] data, as a list of pieces
    (header page, then each layer followed by its padding) ready for a vectored write."""
    layer_bytes = layout.layer_bytes(tokens)
    if len(data) != layout.layers * layer_bytes:
        raise ValueError(
            f"block data is {len(data)} bytes, layout needs "
            f"{layout.layers} x {tokens} x {layout.bytes_per_token_layer} = "
            f"{layout.layers * layer_bytes}"
        )
    stride = layout.file_layer_stride(tokens)
    pad = b"\0" * (stride - layer_bytes)
    layers = [data[i * layer_bytes : (i + 1) * layer_bytes] for i in range(layout.layers)]
    header = BlockHeader(
        block_hash,
        parent_hash,
        layout.layers,
        tokens,
        layout.bytes_per_token_layer,
        stride,
        tuple(crc32c(layer) for layer in layers),
    )
    pieces: list[memoryview | bytes] = [encode_header(header)]
    for layer in layers:
        pieces.append(layer)
        if pad:
            pieces.append(pad)
    return header, pieces


def verify_layer(header: BlockHeader, layer: int, data: memoryview | bytes) -> None:
    actual = crc32c(data)
    expected = header.layer_crcs[layer]
    if actual != expected:
        raise ChecksumMismatch(header.block_hash, layer, expected, actual)


def verify_image(image: memoryview, expected_hash: bytes) -> BlockHeader:
    """Check a whole file image (header + all layers) as read into memory."""
    header = decode_header(image[:HEADER_BYTES])
    if header.block_hash != expected_hash:
        raise BlockFormatError(
            f"file holds block {header.block_hash.hex()}, expected {expected_hash.hex()}"
        )
    if len(image) < header.file_bytes:
        raise BlockFormatError(f"image truncated: {len(image)} < {header.file_bytes} bytes")
    for layer in range(header.layers):
        start = header.layer_offset(layer)
        verify_layer(header, layer, image[start : start + header.layer_bytes])
    return header
