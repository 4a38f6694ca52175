"""The engine's paged KV cache as the node agents see it: registered with NIXL in the
engine process, described as an EngineKvTarget, and watched for the agents' per-layer
notifications. Needs NIXL and numpy, not vLLM: it is tested against plain buffers laid
out like vLLM's (and against CUDA tensors where a GPU exists).

vLLM gives one tensor per attention layer. Two layouts are understood:
- K and V together per block, (num_blocks, 2, block_size, ...) (the CPU backend): one
  plane, a block's Layer Block is its whole slot;
- K and V apart, (2, num_blocks, block_size, ...) (FlashAttention on GPUs): two planes, a
  block's Layer Block is its K slot followed by its V slot.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from dualpath_agent.engine_target import EngineTarget, LayerArrivals, load_parts, parse_tag
from dualpath_agent.layout import BlockLayout

log = logging.getLogger(__name__)


class LoadFailed(Exception):
    """A load into the engine failed or timed out: its blocks must be recomputed."""


@dataclass(frozen=True)
class LayerBuffer:
    """One layer's KV-cache tensor, as addresses: plane p of block b starts at
    plane_addresses[p] + b * block_stride and is plane_block_bytes long."""

    plane_addresses: tuple[int, ...]
    plane_block_bytes: int
    block_stride: int
    nbytes: int
    base_address: int


def describe_layer(
    shape: Sequence[int],
    strides: Sequence[int],
    itemsize: int,
    data_ptr: int,
    num_blocks: int,
) -> LayerBuffer:
    """Addresses of one vLLM KV-cache tensor (shape/strides in elements), either layout."""
    if len(shape) < 3:
        raise ValueError(f"unexpected KV-cache tensor shape {tuple(shape)}")
    nbytes = int(np.prod(shape)) * itemsize
    if shape[0] == num_blocks and shape[1] == 2:
        return LayerBuffer(
            (data_ptr,), int(np.prod(shape[1:])) * itemsize, strides[0] * itemsize, nbytes, data_ptr
        )
    if shape[0] == 2 and shape[1] == num_blocks:
        k, v = data_ptr, data_ptr + strides[0] * itemsize
        return LayerBuffer(
            (k, v), int(np.prod(shape[2:])) * itemsize, strides[1] * itemsize, nbytes, data_ptr
        )
    raise ValueError(
        f"KV-cache tensor shape {tuple(shape)} is neither (num_blocks={num_blocks}, 2, ...) "
        f"nor (2, num_blocks, ...)"
    )


class EngineKvCache:
    """The engine's KV-cache tensors registered with this process's NIXL agent."""

    def __init__(
        self,
        name: str,
        layers: Sequence[LayerBuffer],
        block_tokens: int,
        mem_type: str = "DRAM",
        device_id: int = 0,
    ) -> None:
        from dualpath_agent.transport import NixlRuntime

        if not layers:
            raise ValueError("no KV-cache layers to register")
        first = layers[0]
        if any(
            (len(layer.plane_addresses), layer.plane_block_bytes, layer.block_stride)
            != (len(first.plane_addresses), first.plane_block_bytes, first.block_stride)
            for layer in layers
        ):
            raise ValueError("KV-cache layers differ in geometry")
        self.layers = list(layers)
        self.block_tokens = block_tokens
        self.mem_type = mem_type
        self.planes = len(first.plane_addresses)
        self.layer_block_bytes = self.planes * first.plane_block_bytes
        if self.layer_block_bytes % block_tokens:
            raise ValueError(
                f"a Layer Block of {self.layer_block_bytes} bytes does not split into "
                f"{block_tokens} tokens"
            )
        self.layout = BlockLayout(
            layers=len(layers),
            block_tokens=block_tokens,
            bytes_per_token_layer=self.layer_block_bytes // block_tokens,
        )
        # The engine only receives: UCX alone (no POSIX files here).
        self.runtime = NixlRuntime(name, backends=("UCX",))
        self.name = self.runtime.name
        agent = self.runtime.agent
        self._registration = agent.register_memory(
            [(layer.base_address, layer.nbytes, device_id, "") for layer in layers], mem_type
        )
        self.metadata = bytes(agent.get_agent_metadata())
        self._plane_addresses = np.array(
            [layer.plane_addresses for layer in layers], dtype=np.uint64
        )
        self._lock = threading.Lock()
        self._arrivals: dict[str, LayerArrivals] = {}
        log.info(
            "engine KV cache registered with NIXL",
            extra={
                "nixl_agent": self.name,
                "layers": len(layers),
                "planes": self.planes,
                "layer_block_bytes": self.layer_block_bytes,
                "mem_type": mem_type,
            },
        )

    def target(self, block_ids: Sequence[int]) -> EngineTarget:
        """A fresh target (its own transfer id) for loading into these engine blocks."""
        return EngineTarget(
            agent_name=self.name,
            agent_metadata=self.metadata,
            mem_type=self.mem_type,
            plane_addresses=self._plane_addresses,
            plane_block_bytes=self.layers[0].plane_block_bytes,
            block_stride=self.layers[0].block_stride,
            block_ids=np.asarray(block_ids, dtype=np.uint64),
            transfer_id=uuid.uuid4().hex,
        )

    def expect(self, target: EngineTarget, local_blocks: int, remote_blocks: int) -> None:
        """Start counting a load's notifications (before the load is asked for)."""
        with self._lock:
            self._arrivals[target.transfer_id] = LayerArrivals(
                self.layout.layers, load_parts(local_blocks, remote_blocks)
            )

    def forget(self, transfer_id: str) -> None:
        with self._lock:
            self._arrivals.pop(transfer_id, None)

    def poll(self) -> None:
        """Fold newly arrived notifications into the loads they belong to."""
        notifs = self.runtime.agent.get_new_notifs()
        with self._lock:
            for messages in notifs.values():
                for message in messages:
                    tag = parse_tag(bytes(message))
                    if tag is not None and tag.transfer_id in self._arrivals:
                        self._arrivals[tag.transfer_id].add(tag)

    def layers_ready(self, transfer_id: str) -> int:
        with self._lock:
            arrivals = self._arrivals.get(transfer_id)
            return arrivals.layers_ready() if arrivals else 0

    def wait_layer(
        self,
        transfer_id: str,
        layer: int,
        timeout_s: float,
        failed: Callable[[], BaseException | None],
    ) -> None:
        """Block until `layer` of a load has landed from every writer; LoadFailed when the
        load's stream reported an error (failed() returns it) or on timeout."""
        deadline = time.monotonic() + timeout_s
        sleep = 0.0
        while self.layers_ready(transfer_id) <= layer:
            error = failed()
            if error is not None:
                raise LoadFailed(str(error)) from error
            if time.monotonic() > deadline:
                raise LoadFailed(f"layer {layer} did not arrive within {timeout_s:.0f}s")
            self.poll()
            if self.layers_ready(transfer_id) > layer:
                return
            sleep = min(0.002, sleep + 0.0001)
            time.sleep(sleep)

    def close(self) -> None:
        agent = self.runtime.agent
        try:
            agent.deregister_memory(self._registration)
        except Exception as exc:  # shutting down: report, never raise
            log.warning("NIXL deregistration failed", extra={"error": str(exc)})
