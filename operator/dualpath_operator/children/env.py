"""Environment variables derived from the spec: UCX/NCCL QoS knobs and pod identity."""

from __future__ import annotations

from dualpath_operator.children.common import ClusterContext
from dualpath_operator.kube import Obj
from dualpath_operator.validation import effective_traffic_class


def _var(name: str, value: object) -> Obj:
    return {"name": name, "value": str(value)}


def field_ref(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def pod_identity_env() -> list[Obj]:
    return [
        field_ref("NODE_NAME", "spec.nodeName"),
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        field_ref("POD_IP", "status.podIP"),
    ]


def kv_env(ctx: ClusterContext) -> list[Obj]:
    """KV-cache transfers (UCX, used by NIXL): the low-priority class; TCP fallback DSCP."""
    net = ctx.spec.network
    kv = ctx.qos_by_purpose.get("kvCache")
    env = []
    if kv is not None:
        env += [
            _var("UCX_IB_TRAFFIC_CLASS", effective_traffic_class(kv)),
            _var("UCX_IB_SL", kv.service_level),
            _var("DUALPATH_KV_DSCP", kv.dscp),
        ]
    env.append(_var("UCX_IB_GID_INDEX", net.gid_index))
    if net.ucx_net_devices:
        env.append(_var("UCX_NET_DEVICES", net.ucx_net_devices))
    if not net.tcp_fallback:
        # "^tcp": every transport but TCP, so a missing RDMA setup fails instead of silently
        # crawling over the pod network.
        env.append(_var("UCX_TLS", "^tcp"))
    env.append(_var("DUALPATH_TCP_FALLBACK", "true" if net.tcp_fallback else "false"))
    return env


def collectives_env(ctx: ClusterContext) -> list[Obj]:
    """Model collectives (NCCL): the high-priority class."""
    net = ctx.spec.network
    coll = ctx.qos_by_purpose.get("collectives")
    env = [_var("NCCL_IB_GID_INDEX", net.gid_index)]
    if coll is not None:
        env += [
            _var("NCCL_IB_TC", effective_traffic_class(coll)),
            _var("NCCL_IB_SL", coll.service_level),
        ]
    if net.nccl_ib_hca:
        env.append(_var("NCCL_IB_HCA", net.nccl_ib_hca))
    return env
