"""What the router tells an engine about one request, in the OpenAI body's
`kv_transfer_params` (the field vLLM's P/D proxies use): {"dualpath": {...}}.

One typed definition, built by the router and read back by the connector's scheduler side.
A request without it is served standalone: the engine loads its cached prefix from its own
node's storage and persists new blocks through its own agent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from dualpath.v1 import traffic_controller_pb2

KEY = "dualpath"


class Role(StrEnum):
    # Standalone engine (no router): load PE_READ from the own agent, save to it.
    STANDALONE = "standalone"
    # Prefill of a P/D pair: load by the controller's read path, hand new blocks to the
    # decode agent, generate one token.
    PREFILL = "prefill"
    # Decode of a P/D pair: load what the prefill handed over from the own (decode) agent.
    DECODE = "decode"
    # Prefill and decode on this one engine (a gateway's endpoint picker routes the whole
    # request here): load by the controller's read path like a prefill (DE_READ/SPLIT: the
    # decode node's agent reads storage and writes to this engine), persist new blocks
    # through the own agent like a standalone engine (no decode engine takes them over),
    # and generate the whole answer.
    WHOLE = "whole"


class ReadPathName(StrEnum):
    PE_READ = "PE_READ"
    DE_READ = "DE_READ"
    SPLIT = "SPLIT"

    @property
    def proto(self) -> int:
        """The dualpath.v1.ReadPath value."""
        return int(traffic_controller_pb2.ReadPath.Value(f"READ_PATH_{self.value}"))

    @classmethod
    def from_proto(cls, value: int) -> ReadPathName:
        return cls(traffic_controller_pb2.ReadPath.Name(value).removeprefix("READ_PATH_"))


@dataclass(frozen=True)
class DualPathParams:
    request_id: str = ""
    role: Role = Role.STANDALONE
    read_path: ReadPathName = ReadPathName.PE_READ
    de_read_fraction: float = 0.0
    decode_agent_endpoint: str = ""
    prefill_agent_endpoint: str = ""

    def __post_init__(self) -> None:
        if self.read_path is not ReadPathName.PE_READ and not self.decode_agent_endpoint:
            raise ValueError(
                f"kv_transfer_params.{KEY}.decode_agent_endpoint is required for "
                f"{self.read_path.value}"
            )
        if self.read_path is ReadPathName.SPLIT and not 0.0 < self.de_read_fraction < 1.0:
            raise ValueError(
                f"kv_transfer_params.{KEY}.de_read_fraction must be in (0, 1) for SPLIT, "
                f"got {self.de_read_fraction}"
            )

    def to_body(self) -> dict[str, Any]:
        """The `kv_transfer_params` value for an OpenAI request body."""
        fields = asdict(self)
        fields["role"] = self.role.value
        fields["read_path"] = self.read_path.value
        return {KEY: fields}

    @classmethod
    def from_body(cls, kv_transfer_params: dict[str, Any] | None) -> DualPathParams:
        """Read back (ValueError naming the field when malformed; standalone when absent)."""
        raw = (kv_transfer_params or {}).get(KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError(f"kv_transfer_params.{KEY} must be an object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"kv_transfer_params.{KEY} has unknown fields {sorted(unknown)}")
        try:
            role = Role(raw.get("role", Role.STANDALONE.value))
        except ValueError:
            raise ValueError(f"kv_transfer_params.{KEY}.role: {raw.get('role')!r}") from None
        try:
            path = ReadPathName(raw.get("read_path", ReadPathName.PE_READ.value))
        except ValueError:
            raise ValueError(
                f"kv_transfer_params.{KEY}.read_path: {raw.get('read_path')!r}"
            ) from None
        return cls(
            request_id=str(raw.get("request_id", "")),
            role=role,
            read_path=path,
            de_read_fraction=float(raw.get("de_read_fraction", 0.0)),
            decode_agent_endpoint=str(raw.get("decode_agent_endpoint", "")),
            prefill_agent_endpoint=str(raw.get("prefill_agent_endpoint", "")),
        )
