"""Multus NetworkAttachmentDefinitions, one per spec.network.attachments entry, created
only when the k8s.cni.cncf.io CRD is installed (otherwise status says NetworkReady=False)."""

from __future__ import annotations

import json

from dualpath_operator.api import AttachmentSpec
from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.discovery import Capabilities
from dualpath_operator.kube import Obj, ResourceType

NAD = ResourceType(
    "k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "network-attachment-definitions"
)
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
CNI_VERSION = "0.3.1"


def cni_config(name: str, att: AttachmentSpec) -> Obj:
    config: Obj = {"cniVersion": CNI_VERSION, "name": name, "type": att.cni_type}
    if att.cni_type in ("macvlan", "ipvlan") and att.master:
        config["master"] = att.master
        if att.cni_type == "macvlan":
            config["mode"] = "bridge"
    if att.cni_type == "host-device" and att.master:
        config["device"] = att.master
    if att.mtu:
        config["mtu"] = att.mtu
    ipam: Obj = {"type": att.ipam.type}
    if att.ipam.range:
        ipam["range" if att.ipam.type == "whereabouts" else "subnet"] = att.ipam.range
    if att.ipam.gateway:
        ipam["gateway"] = att.ipam.gateway
    config["ipam"] = ipam
    return config


def attachment(ctx: ClusterContext, att: AttachmentSpec) -> Obj:
    name = ctx.attachment_name(att.name)
    annotations = {RESOURCE_NAME_ANNOTATION: att.rdma_resource} if att.rdma_resource else None
    return {
        "apiVersion": NAD.api_version,
        "kind": NAD.kind,
        "metadata": ctx.metadata(name, "network", annotations=annotations),
        "spec": {"config": json.dumps(cni_config(name, att), sort_keys=True)},
    }


def resource_for(caps: Capabilities) -> ResourceType | None:
    return NAD if caps.network_attachments else None


def build(ctx: ClusterContext) -> list[Obj]:
    if not ctx.capabilities.network_attachments:
        return []
    return [attachment(ctx, att) for att in ctx.spec.network.attachments]


KIND = ChildKind("networkattachmentdefinition", resource_for, build, prune=True, phase=0)
