"""Kubernetes resource quantities ("4Gi", "500M", "250m") as numbers."""

from __future__ import annotations

import re

_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def parse_quantity(value: int | str) -> float:
    """A quantity's value in base units. Raises ValueError naming the bad text."""
    if isinstance(value, int):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 4Gi, 500M, 2)")
    number, suffix = match.groups()
    return float(number) * _SUFFIX[suffix or ""]


def quantity_bytes(value: int | str) -> int:
    return int(parse_quantity(value))
