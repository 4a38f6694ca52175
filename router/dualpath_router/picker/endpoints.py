"""Engines as the gateway sees them: "<ip:port>" endpoints (pure functions).

An engine's endpoint is the host:port of its `url` (for a gateway these are pod IPs and the
engines' serving port, exactly what the InferencePool's endpoints are). The subset hint's
endpoints are mapped back to prefill engine ids through them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dualpath_router.config import EngineSpec

DEFAULT_PORTS = {"http": 80, "https": 443}


def engine_endpoint(spec: EngineSpec) -> str:
    """ "host:port" of an engine's URL (the scheme's default port when it names none)."""
    parts = urlsplit(spec.url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    if ":" in host:  # IPv6 literal: keep the brackets of ip:port
        host = f"[{host}]"
    return f"{host}:{port}"


def normalize(endpoint: str) -> str:
    return endpoint.strip().lower()


@dataclass(frozen=True)
class Candidates:
    """The prefill engines a request may go to."""

    engine_ids: tuple[str, ...]
    # Whether the gateway restricted the choice (a subset hint was sent).
    restricted: bool
    # Subset endpoints that are no prefill engine this picker knows (logged).
    unknown: tuple[str, ...] = ()


def prefill_candidates(engines: Iterable[EngineSpec], subset: Sequence[str] | None) -> Candidates:
    """The prefill engines allowed by the subset (all of them without one), sorted by id."""
    prefill = sorted((e for e in engines if e.role == "prefill"), key=lambda e: e.id)
    if subset is None:
        return Candidates(tuple(e.id for e in prefill), restricted=False)
    wanted = {normalize(s) for s in subset}
    ids = tuple(e.id for e in prefill if normalize(engine_endpoint(e)) in wanted)
    known = {normalize(engine_endpoint(e)) for e in prefill}
    unknown = tuple(sorted(wanted - known))
    return Candidates(ids, restricted=True, unknown=unknown)
