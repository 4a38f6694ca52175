"""The router's configuration: the engines it fronts and its limits, validated at startup.

An engine is given on the command line as `--engine id=prefill-0,role=prefill,
url=http://127.0.0.1:8001,node=node-0,agent=127.0.0.1:7001[,hbm_tokens=N][,group=G]` or in
a YAML/JSON file (`--engines-file`) holding a list of mappings with the same keys. Every
error names the engine and the field, so a bad deployment fails at start, not per request.

The engines file is read again whenever it changes (a mounted ConfigMap is updated in
place): engines added to it are fronted, engines removed from it are let go, and a file that
does not validate changes nothing (engines_file.py). With a file, the router may start with
no engine of a role: it is not ready until one is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from dualpath_common import tls
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dualpath_router.tenancy import TenantSalts


class ConfigError(ValueError):
    """A configuration problem; the message names the flag, engine and field."""


def _host_port(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field} must be host:port, got {value!r}")
    return value


class EngineSpec(BaseModel):
    """One vLLM engine (one GPU) behind the router."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="engine id at the traffic controller")
    role: Literal["prefill", "decode"]
    url: str = Field(description="base URL of the engine's OpenAI server, http://host:port")
    node: str = Field(min_length=1, description="node (host) the engine runs on")
    agent: str = Field(description="host:port of the DualPath agent of the engine's node")
    hbm_tokens: int | None = Field(
        default=None, gt=0, description="KV capacity in tokens (default: read from vLLM)"
    )
    group: str = Field(default="", description="decode group (empty: the node)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.strip("/"):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("agent")
    @classmethod
    def _agent(cls, value: str) -> str:
        return _host_port(value, "agent")


class RouterConfig(BaseModel):
    """Everything `dualpath router` needs; built from the command line by `cli`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8000, ge=0, le=65535)
    controller: str
    controller_tls_ca: Path | None = None
    # Mutual TLS to the controller and the agents with this identity directory (role
    # router); `insecure` is the explicit choice of plaintext (cli.py requires one of them).
    tls_dir: Path | None = None
    insecure: bool = False
    engines: tuple[EngineSpec, ...]
    # Watched for changes (engines_file.py); `engines` holds what it said at start, after
    # the command line's `--engine`s (`fixed_engines`, which a file change keeps).
    engines_file: Path | None = None
    fixed_engines: tuple[EngineSpec, ...] = ()
    engines_file_poll_s: float = Field(default=2.0, gt=0)
    block_tokens: int = Field(default=64, gt=0)
    hash_namespace: str = Field(min_length=1)
    # KV bytes per token of the model, all layers. The default is the tiny test model's:
    # 4 layers x 2 (K, V) x 2 KV heads x 32 head dims x 2 bytes (bf16).
    kv_bytes_per_token: int = Field(default=1024, ge=0)
    max_prompt_tokens: int = Field(default=131_072, gt=0)
    max_body_bytes: int = Field(default=16 << 20, gt=0)
    # How long Schedule may wait for capacity (RESOURCE_EXHAUSTED / UNAVAILABLE retried).
    schedule_wait_s: float = Field(default=1.0, ge=0)
    controller_timeout_s: float = Field(default=5.0, gt=0)
    engine_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest gap between two bytes of an engine's answer (a long generation streams).
    engine_read_timeout_s: float = Field(default=600.0, gt=0)
    agent_timeout_s: float = Field(default=2.0, gt=0)
    # Interval of engine polling before the controller tells its report interval.
    poll_interval_s: float = Field(default=0.5, gt=0)
    # Tenant isolation (tenancy.py): the request header naming the tenant, and the file of
    # the secret its cache salt is derived with. Both or neither; with neither, the
    # client's own `cache_salt` is used as sent.
    tenant_header: str | None = Field(default=None, min_length=1)
    tenant_secret_file: Path | None = None

    @field_validator("controller")
    @classmethod
    def _controller(cls, value: str) -> str:
        return _host_port(value, "controller")

    @model_validator(mode="after")
    def _engines(self) -> RouterConfig:
        check_unique_ids(self.engines)
        if self.engines_file is None:  # with a file, engines may come later
            for role in ("prefill", "decode"):
                if not any(e.role == role for e in self.engines):
                    raise ValueError(f"engines: at least one {role} engine is needed")
        return self

    @model_validator(mode="after")
    def _tenancy(self) -> RouterConfig:
        if (self.tenant_header is None) != (self.tenant_secret_file is None):
            raise ValueError("tenant_header and tenant_secret_file go together")
        if self.tenant_header is not None and self.tenant_secret_file is not None:
            try:  # read once here so that a bad secret fails at start
                TenantSalts.from_file(self.tenant_header, self.tenant_secret_file)
            except (OSError, ValueError) as exc:
                raise ValueError(f"tenant_secret_file: {exc}") from None
        return self

    @model_validator(mode="after")
    def _security(self) -> RouterConfig:
        if self.tls_dir is not None and self.insecure:
            raise ValueError("tls_dir and insecure exclude each other")
        if self.tls_dir is not None and self.controller_tls_ca is not None:
            raise ValueError("controller_tls_ca: with tls_dir the controller is reached with it")
        if self.tls_dir is not None:
            try:  # read once here so that a bad identity fails at start
                tls.IdentityDir.load(self.tls_dir)
            except tls.TlsConfigError as exc:
                raise ValueError(f"tls_dir: {exc}") from None
        return self

    def identity(self) -> tls.IdentityDir | None:
        """The identity directory, read now (its files may have been rotated since start)."""
        return tls.load_identity(self.tls_dir)

    @property
    def prefill_engines(self) -> list[EngineSpec]:
        return [e for e in self.engines if e.role == "prefill"]


def describe_errors(error: ValidationError, prefix: str = "") -> str:
    """One line per pydantic error, each naming its field (`engines[1].url: ...`)."""
    lines = []
    for item in error.errors():
        where = prefix
        for part in item["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def parse_engine_arg(text: str) -> dict[str, str]:
    """`k=v,k=v` into a mapping (validated later with EngineSpec)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--engine {text!r}: expected key=value pairs, got {part!r}")
        if key in fields:
            raise ConfigError(f"--engine {text!r}: field {key!r} given twice")
        fields[key] = value.strip()
    return fields


def check_unique_ids(engines: Sequence[EngineSpec]) -> None:
    ids = [e.id for e in engines]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"engines: duplicate engine id(s) {duplicates}")


def validate_engines(sources: Sequence[tuple[str, dict[str, Any]]]) -> tuple[EngineSpec, ...]:
    """(where, raw mapping) pairs into EngineSpecs; ConfigError naming the source and field."""
    engines = []
    for where, raw in sources:
        try:
            engines.append(EngineSpec.model_validate(raw))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {describe_errors(exc)}") from None
    return tuple(engines)


def engines_from_file(path: Path, text: str | None = None) -> tuple[EngineSpec, ...]:
    """The engines of an engines file (`text`: its content, already read)."""
    entries = load_engines_file(path, text)
    return validate_engines([(f"--engines-file {path} [{i}]", e) for i, e in enumerate(entries)])


def load_engines_file(path: Path, text: str | None = None) -> list[dict[str, Any]]:
    """A YAML or JSON file: a list of engine mappings (or a mapping with `engines:`)."""
    try:
        data = yaml.safe_load(path.read_text() if text is None else text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--engines-file {path}: {exc}") from exc
    if data is None:  # an empty file: no engines (yet)
        data = []
    if isinstance(data, dict) and set(data) == {"engines"}:
        data = data["engines"]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConfigError(f"--engines-file {path}: expected a list of engine mappings")
    return data


def build_config(
    *,
    engine_args: Sequence[str],
    engines_file: Path | None,
    **settings: Any,
) -> RouterConfig:
    """Validate everything; raises ConfigError naming the bad flag, engine and field."""
    if not engine_args and engines_file is None:
        raise ConfigError("no engines: give --engine (repeatable) or --engines-file")
    fixed = validate_engines([(f"--engine {a!r}", parse_engine_arg(a)) for a in engine_args])
    engines = fixed + (engines_from_file(engines_file) if engines_file is not None else ())
    try:
        return RouterConfig(
            engines=engines, engines_file=engines_file, fixed_engines=fixed, **settings
        )
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
