"""The connector's settings: `kv_connector_extra_config` of vLLM's --kv-transfer-config."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dualpath_common import tls

LOAD_MODES = ("layerwise", "async")
# Settings that may name the engine's environment, ${VAR}: one shared --kv-transfer-config
# (the operator's connector ConfigMap) then fits every engine, each filling in its own
# node's IP and pod name from the downward API.
EXPANDED_KEYS = ("agent_endpoint", "engine_id")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(key: str, value: str, environ: Mapping[str, str]) -> str:
    """${VAR} replaced from `environ`; an unset or empty VAR is an error naming it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise ValueError(
                f"kv_connector_extra_config.{key}: {value!r} names ${{{name}}}, which is not"
                " set in the engine's environment"
            )
        return environ[name]

    return _VAR.sub(one, value)


@dataclass(frozen=True)
class ConnectorConfig:
    # gRPC endpoint of this node's agent (host:port).
    agent_endpoint: str
    # Folded into the root of every block hash chain: two models never share a block.
    hash_namespace: str = ""
    # This engine's id in logs (and its NIXL agent's name).
    engine_id: str = "engine"
    # A layer not landed by then fails the load: its blocks are recomputed.
    load_timeout_s: float = 30.0
    # Deadline of one agent RPC (Lookup, PutBlocks).
    rpc_timeout_s: float = 10.0
    # "layerwise": the load runs during the request's first step and attention of layer i
    # waits for layer i only (the paper's layer-wise prefill; the step waits for the load).
    # "async": vLLM parks the request until its load has landed and runs other requests
    # meanwhile (no step waits for a load; no overlap within the request).
    load_mode: str = "layerwise"
    # Mutual TLS to the agents with this identity directory (ca.crt, tls.crt, tls.key; role
    # engine). `insecure: true` is the explicit choice of plaintext; one of them is required.
    tls_dir: str = ""
    insecure: bool = False

    def identity(self) -> tls.IdentityDir | None:
        """The identity directory, read now (a new channel presents the current files)."""
        return tls.load_identity(self.tls_dir or None)

    @classmethod
    def from_extra(
        cls,
        extra: dict[str, Any] | None,
        default_namespace: str,
        environ: Mapping[str, str] | None = None,
    ) -> ConnectorConfig:
        extra = dict(extra or {})
        for key in EXPANDED_KEYS:
            if isinstance(extra.get(key), str):
                extra[key] = expand_env(key, extra[key], os.environ if environ is None else environ)
        known = {f.name for f in fields(cls)}
        unknown = set(extra) - known
        if unknown:
            raise ValueError(f"kv_connector_extra_config has unknown keys {sorted(unknown)}")
        if not extra.get("agent_endpoint"):
            raise ValueError("kv_connector_extra_config.agent_endpoint is required (host:port)")
        extra.setdefault("hash_namespace", default_namespace)
        if extra.get("load_mode", "layerwise") not in LOAD_MODES:
            raise ValueError(
                f"kv_connector_extra_config.load_mode must be one of {', '.join(LOAD_MODES)}, "
                f"got {extra['load_mode']!r}"
            )
        if not isinstance(extra.get("insecure", False), bool):
            raise ValueError("kv_connector_extra_config.insecure must be true or false")
        if bool(extra.get("tls_dir")) == bool(extra.get("insecure")):
            raise ValueError(
                "kv_connector_extra_config: give exactly one of tls_dir (mutual TLS identity"
                " directory: ca.crt, tls.crt, tls.key) or insecure: true (plaintext; local tests)"
            )
        if extra.get("tls_dir"):
            try:  # a bad identity fails the engine at start, naming the file
                tls.IdentityDir.load(extra["tls_dir"])
            except tls.TlsConfigError as exc:
                raise ValueError(f"kv_connector_extra_config.tls_dir: {exc}") from None
        for key in ("load_timeout_s", "rpc_timeout_s"):
            if key in extra:
                extra[key] = float(extra[key])
                if extra[key] <= 0:
                    raise ValueError(f"kv_connector_extra_config.{key} must be > 0")
        return cls(**extra)


def kv_transfer_config(
    agent_endpoint: str, engine_id: str, tls_dir: str | None = None, **extra: Any
) -> dict[str, Any]:
    """vLLM's --kv-transfer-config for an engine whose node agent is at agent_endpoint: mutual
    TLS with `tls_dir`, else plaintext (`insecure: true`, what local launchers use)."""
    security: dict[str, Any] = {"tls_dir": tls_dir} if tls_dir else {"insecure": True}
    return {
        "kv_connector": "DualPathConnector",
        "kv_connector_module_path": "dualpath_vllm.connector",
        "kv_role": "kv_both",
        # A failed load is recomputed, never a failed request (the connector insists).
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {
            "agent_endpoint": agent_endpoint,
            "engine_id": engine_id,
            **security,
            **extra,
        },
    }
