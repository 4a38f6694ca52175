"""The bodies the router sends to the prefill and the decode engine (pure functions).

Both are the client's body with a `kv_transfer_params.dualpath` entry that tells the
engines' DualPath KV connector which request this is, its role, and the agents that move
its KV. The prefill engine computes the first token only (its KV lands at the decode side);
the decode engine gets the client's own limits and streaming choice and produces the answer.
The endpoint picker's destination gets the client's body with role "whole" (it prefills and
decodes). All carry the request's `cache_salt` (tenancy.py), so the engines' connectors hash the
prompt under the same chain root as the router's Lookup did.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dualpath.v1 import traffic_controller_pb2 as pb
from dualpath_vllm.params import DualPathParams, ReadPathName, Role

READ_PATH_NAMES = {path.proto: path.value for path in ReadPathName}
# Fields that contradict a one-token, non-streaming prefill (vLLM rejects the request:
# stream_options needs stream=true, min_tokens must not exceed max_tokens).
PREFILL_DROPPED = ("max_completion_tokens", "stream_options", "min_tokens")


@dataclass(frozen=True)
class Route:
    """The controller's assignment for one request, as the engines need it."""

    request_id: str
    prefill_engine_id: str
    decode_engine_id: str
    read_path: str  # PE_READ, DE_READ or SPLIT
    de_read_fraction: float
    prefill_agent_endpoint: str
    decode_agent_endpoint: str

    @classmethod
    def from_assignment(cls, assignment: pb.Assignment) -> Route:
        path = READ_PATH_NAMES.get(assignment.read_path)
        if path is None:
            raise ValueError(
                f"assignment {assignment.request_id!r} has no read path"
                f" ({pb.ReadPath.Name(assignment.read_path)})"
            )
        return cls(
            request_id=assignment.request_id,
            prefill_engine_id=assignment.prefill_engine_id,
            decode_engine_id=assignment.decode_engine_id,
            read_path=path,
            de_read_fraction=assignment.de_read_fraction,
            prefill_agent_endpoint=assignment.prefill_agent_endpoint,
            decode_agent_endpoint=assignment.decode_agent_endpoint,
        )

    @property
    def disaggregated(self) -> bool:
        """False when one engine was given both roles: it then serves the request alone."""
        return self.prefill_engine_id != self.decode_engine_id


def prefill_params(route: Route) -> DualPathParams:
    return DualPathParams(
        request_id=route.request_id,
        role=Role.PREFILL,
        read_path=ReadPathName(route.read_path),
        de_read_fraction=route.de_read_fraction,
        decode_agent_endpoint=route.decode_agent_endpoint,
        prefill_agent_endpoint=route.prefill_agent_endpoint,
    )


def decode_params(route: Route) -> DualPathParams:
    return DualPathParams(
        request_id=route.request_id,
        role=Role.DECODE,
        decode_agent_endpoint=route.decode_agent_endpoint,
        prefill_agent_endpoint=route.prefill_agent_endpoint,
    )


def whole_params(route: Route) -> DualPathParams:
    """One engine serves the whole request (the endpoint picker sends it to the prefill
    engine): it loads by the read path like a prefill and persists through its own agent."""
    return DualPathParams(
        request_id=route.request_id,
        role=Role.WHOLE,
        read_path=ReadPathName(route.read_path),
        de_read_fraction=route.de_read_fraction,
        decode_agent_endpoint=route.decode_agent_endpoint,
        prefill_agent_endpoint=route.prefill_agent_endpoint,
    )


def salted_body(body: Mapping[str, Any], cache_salt: str | None) -> dict[str, Any]:
    """The client's body with the request's cache salt: the client's own is kept as sent; a
    salt the router derived (tenant header) replaces it. No salt: no `cache_salt` field."""
    out = dict(body)
    if cache_salt is None:
        out.pop("cache_salt", None)
    else:
        out["cache_salt"] = cache_salt
    return out


def prefill_body(body: Mapping[str, Any], route: Route) -> dict[str, Any]:
    """The client's body limited to the first token, not streamed, with prefill params."""
    out = copy.deepcopy(dict(body))
    for name in PREFILL_DROPPED:
        out.pop(name, None)
    out["max_tokens"] = 1
    out["stream"] = False
    out["kv_transfer_params"] = prefill_params(route).to_body()
    return out


def decode_body(body: Mapping[str, Any], route: Route) -> dict[str, Any]:
    """The client's body as sent (its limits, its stream choice) with decode params."""
    out = copy.deepcopy(dict(body))
    out["kv_transfer_params"] = decode_params(route).to_body()
    return out


def whole_body(body: Mapping[str, Any], route: Route) -> dict[str, Any]:
    """The client's body as sent (its limits, its stream choice) with whole-request params,
    for the one engine that prefills and decodes it (the endpoint picker's destination)."""
    out = copy.deepcopy(dict(body))
    out["kv_transfer_params"] = whole_params(route).to_body()
    return out
