"""Policies by name, with validated parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping

from dualpath_controller.policy.base import ParamSpec, Policy
from dualpath_controller.policy.paper import PaperPolicy, PrefillOnlyPolicy
from dualpath_controller.policy.round_robin import RoundRobinPolicy
from dualpath_controller.policy.split import DualPathSplitPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (PaperPolicy, PrefillOnlyPolicy, RoundRobinPolicy, DualPathSplitPolicy)
}


def policy_names() -> list[str]:
    return list(POLICIES)


def _coerce(policy: str, name: str, spec: ParamSpec, raw: object) -> float:
    where = f"policy {policy!r} parameter {name!r}"
    if isinstance(raw, bool):
        raise ValueError(f"{where}: expected a number, got {raw!r}")
    if isinstance(raw, str):
        try:
            value = float(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {raw!r}") from None
    elif isinstance(raw, int | float):
        value = float(raw)
    else:
        raise ValueError(f"{where}: expected a number, got {type(raw).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: must be finite, got {raw!r}")
    if spec.integer and value != int(value):
        raise ValueError(f"{where}: must be a whole number, got {raw!r}")
    if not spec.minimum <= value <= spec.maximum:
        raise ValueError(
            f"{where}={value:g} out of range [{spec.minimum:g}, {spec.maximum:g}] ({spec.help})"
        )
    return float(int(value)) if spec.integer else value


def get_policy(name: str, **params: object) -> Policy:
    """A fresh policy instance. Parameters may be numbers or strings ("3.7e6"); unknown
    names, non-numbers and out-of-range values raise ValueError naming the parameter."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    unknown = sorted(set(params) - set(cls.PARAMS))
    if unknown:
        raise ValueError(
            f"policy {name!r} has no parameter {', '.join(map(repr, unknown))};"
            f" known: {', '.join(cls.PARAMS) or '(none)'}"
        )
    values = {
        key: _coerce(name, key, spec, params[key]) if key in params else spec.default
        for key, spec in cls.PARAMS.items()
    }
    return cls(values)


def parse_policy_params(items: list[str]) -> dict[str, str]:
    """['alpha=3e6', 'z=1.1'] -> {'alpha': '3e6', 'z': '1.1'} (values checked by get_policy)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"policy parameter {item!r} must look like NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def describe_policies() -> Mapping[str, Mapping[str, ParamSpec]]:
    return {name: cls.PARAMS for name, cls in POLICIES.items()}
