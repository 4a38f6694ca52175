"""QoS: `apply_qos` exports UCX_IB_TRAFFIC_CLASS / UCX_IB_SL before NIXL starts (UCX reads
them when it initialises) and computes IP_TOS for fallback sockets; it returns what it
applied so Stat and the logs can show it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class QosConfig:
    traffic_class: int | None = None  # IB traffic class / RoCE TC (UCX_IB_TRAFFIC_CLASS)
    service_level: int | None = None  # IB service level (UCX_IB_SL)
    dscp: int | None = None  # DSCP for fallback TCP sockets (IP_TOS = dscp << 2)

    @property
    def ip_tos(self) -> int | None:
        return None if self.dscp is None else (self.dscp << 2) & 0xFF


def apply_qos(qos: QosConfig) -> dict[str, str]:
    """Export the UCX QoS variables (before NIXL/UCX initialise) and say what was applied."""
    applied: dict[str, str] = {}
    if qos.traffic_class is not None:
        os.environ["UCX_IB_TRAFFIC_CLASS"] = str(qos.traffic_class)
        applied["UCX_IB_TRAFFIC_CLASS"] = str(qos.traffic_class)
    if qos.service_level is not None:
        os.environ["UCX_IB_SL"] = str(qos.service_level)
        applied["UCX_IB_SL"] = str(qos.service_level)
    if qos.ip_tos is not None:
        applied["IP_TOS"] = f"0x{qos.ip_tos:02x} (DSCP {qos.dscp}, fallback sockets)"
    ib = Path("/sys/class/infiniband")
    devices = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    if applied:
        # Say plainly when the IB settings cannot take effect (UCX then runs over TCP/shm).
        applied["ib_devices"] = ",".join(devices) or "none (IB/RoCE settings have no effect)"
    return applied
