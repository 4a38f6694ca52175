"""Byte geometry of KV blocks: on disk, in staging buffers and in request regions.

- Full Block = [layers, tokens, bytes_per_token_layer]; a Layer Block is one layer of it.
- On disk (and in a staging buffer, which holds the file image as read): a 4 KiB header,
  then each layer padded to a 4 KiB boundary, so one layer can be read with O_DIRECT
  without reading the rest. With the usual sizes (tokens * bytes a multiple of 4 KiB) there
  is no padding and the data part is exactly the Full Block.
- A request region (what a prefill engine consumes, in the device tier) is layer-major:
  [layers, total_tokens, bytes_per_token_layer], so layer i of the whole prompt is one
  contiguous range and Layer Blocks of consecutive blocks concatenate with no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 4096
HEADER_BYTES = PAGE
MAX_LAYERS = 960  # the header page holds one CRC32C per layer


def align_up(value: int, alignment: int = PAGE) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class BlockLayout:
    layers: int
    block_tokens: int
    bytes_per_token_layer: int

    def validate(self, field: str = "layout") -> None:
        if not 0 < self.layers <= MAX_LAYERS:
            raise ValueError(f"{field}.layers must be in 1..{MAX_LAYERS}, got {self.layers}")
        if self.block_tokens <= 0:
            raise ValueError(f"{field}.block_tokens must be positive, got {self.block_tokens}")
        if self.bytes_per_token_layer <= 0:
            raise ValueError(
                f"{field}.bytes_per_token_layer must be positive, got {self.bytes_per_token_layer}"
            )

    def layer_bytes(self, tokens: int) -> int:
        """Bytes of one Layer Block holding `tokens` tokens."""
        return tokens * self.bytes_per_token_layer

    def block_bytes(self, tokens: int) -> int:
        """Bytes of one Full Block (dense, no padding)."""
        return self.layers * self.layer_bytes(tokens)

    def file_layer_stride(self, tokens: int) -> int:
        return align_up(self.layer_bytes(tokens))

    def file_bytes(self, tokens: int) -> int:
        """Size of a block file (and of its staging image): header + padded layers."""
        return HEADER_BYTES + self.layers * self.file_layer_stride(tokens)


@dataclass(frozen=True)
class RegionLayout:
    """Layer-major layout of a request's KV: [layers, total_tokens, bytes_per_token_layer]."""

    layers: int
    total_tokens: int
    bytes_per_token_layer: int

    @property
    def layer_stride(self) -> int:
        return self.total_tokens * self.bytes_per_token_layer

    @property
    def nbytes(self) -> int:
        return self.layers * self.layer_stride

    def offset(self, layer: int, token: int) -> int:
        return layer * self.layer_stride + token * self.bytes_per_token_layer
