"""A DE_READ load on its own thread, so that a test can kill or stop the decode agent while
the load is in flight and then look at how it ended."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import grpc
from dualpath_agent.client import AgentClient, LoadResult, ReadPath
from dualpath_agent.layout import BlockLayout
from dualpath_agent.messages import BlockLike


class BackgroundDeRead:
    """Started on construction; after join(), `results` or `errors` holds how it ended."""

    def __init__(
        self,
        client: AgentClient,
        request_id: str,
        blocks: Sequence[BlockLike],
        layout: BlockLayout,
        decode_endpoint: str,
        *,
        release_after_load: bool = True,
    ) -> None:
        self.results: list[LoadResult] = []
        self.errors: list[grpc.RpcError] = []

        def load() -> None:
            try:
                self.results.append(
                    client.load(
                        request_id,
                        blocks,
                        layout,
                        ReadPath.DE_READ,
                        decode_endpoint=decode_endpoint,
                        release_after_load=release_after_load,
                    )
                )
            except grpc.RpcError as exc:
                self.errors.append(exc)

        self._thread = threading.Thread(target=load)
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the load to end; whether it has."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
