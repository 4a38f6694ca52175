"""What every child builder needs: the cluster's identity, its parsed spec, the API
server's capabilities, names, labels, owner reference and the resolved config.

Everything here is pure: builders are functions of a `ClusterContext`, testable without
a cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from dualpath_common.models import get_model_preset

from dualpath_operator.api import DualPathClusterSpec, QosClass
from dualpath_operator.constants import (
    API_VERSION,
    CONFIG_FILE_NAME,
    CONFIG_MOUNT_DIR,
    KIND,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_ROLE,
    MANAGED_BY_VALUE,
)
from dualpath_operator.discovery import Capabilities
from dualpath_operator.engine_pods import EnginePod
from dualpath_operator.kube import Obj, ResourceType
from dualpath_operator.policy import resolved_policy_params
from dualpath_operator.quantity import quantity_bytes
from dualpath_operator.validation import effective_traffic_class

ROLES = ("prefill", "decode")


def agent_daemonset_name(cluster: str, role: str) -> str:
    return f"{cluster}-{role}-agent"


def controller_name(cluster: str) -> str:
    return f"{cluster}-controller"


@dataclass(frozen=True)
class ClusterContext:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: DualPathClusterSpec
    capabilities: Capabilities
    # Observed, not desired: the cluster's engine pods (managed and attached) as they are
    # now. Only the router's engines file is built from them.
    engine_pods: tuple[EnginePod, ...] = ()

    # --- names -------------------------------------------------------------------------
    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def qos_env_config_map_name(self) -> str:
        return f"{self.name}-qos-env"

    @property
    def agent_service_account(self) -> str:
        return f"{self.name}-agent"

    @property
    def controller_name(self) -> str:
        return controller_name(self.name)

    @property
    def agents_service_name(self) -> str:
        return f"{self.name}-agents"

    def agent_daemonset_name(self, role: str) -> str:
        return agent_daemonset_name(self.name, role)

    def attachment_name(self, attachment: str) -> str:
        return f"{self.name}-{attachment}"

    # --- engines -----------------------------------------------------------------------
    def engine_daemonset_name(self, role: str, instance: int) -> str:
        return f"{self.name}-{role}-engine-{instance}"

    @property
    def router_name(self) -> str:
        return f"{self.name}-router"

    @property
    def picker_name(self) -> str:
        return f"{self.name}-picker"

    @property
    def engines_config_map_name(self) -> str:
        """The router's engines file (the Ready engine pods), kept by the operator."""
        return f"{self.name}-engines"

    @property
    def connector_config_map_name(self) -> str:
        """The KV connector's settings every engine imports (the attach-mode convention)."""
        return f"{self.name}-connector"

    @property
    def router_endpoint(self) -> str:
        assert self.spec.engines is not None
        return f"http://{self.router_name}.{self.namespace}.svc:{self.spec.engines.router.port}"

    @property
    def served_model_name(self) -> str:
        """What clients put in "model", and the root of the KV block hash chains (the router
        and every engine must agree on it)."""
        engines = self.spec.engines
        model = engines.model if engines else None
        if model is None:
            return "model"
        if model.served_model_name:
            return model.served_model_name
        if model.path:
            return model.path.rstrip("/").rsplit("/", 1)[-1]
        return model.generated or "model"

    @property
    def controller_address(self) -> str:
        port = self.spec.traffic_controller.port
        return f"{self.controller_name}.{self.namespace}.svc:{port}"

    # --- labels and ownership ----------------------------------------------------------
    def labels(self, component: str, role: str | None = None) -> dict[str, str]:
        out = self.selector_labels(component, role)
        out[LABEL_MANAGED_BY] = MANAGED_BY_VALUE
        out[LABEL_PART_OF] = "dualpath"
        out[LABEL_CLUSTER] = self.name
        return out

    def selector_labels(self, component: str, role: str | None = None) -> dict[str, str]:
        """Immutable selector labels (a DaemonSet's selector can never change)."""
        out = {LABEL_NAME: "dualpath", LABEL_INSTANCE: self.name, LABEL_COMPONENT: component}
        if role:
            out[LABEL_ROLE] = role
        return out

    def owner_reference(self) -> Obj:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(
        self,
        name: str,
        component: str,
        role: str | None = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Obj:
        meta: Obj = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels(component, role), **(labels or {})},
            "ownerReferences": [self.owner_reference()],
        }
        if annotations:
            meta["annotations"] = annotations
        return meta

    # --- resolved config ---------------------------------------------------------------
    @cached_property
    def qos_by_purpose(self) -> dict[str, QosClass]:
        return {c.purpose: c for c in self.spec.network.qos}

    @cached_property
    def resolved_config(self) -> Obj:
        return resolve_config(self)

    @cached_property
    def config_json(self) -> str:
        return json.dumps(self.resolved_config, indent=2, sort_keys=True) + "\n"

    @cached_property
    def config_hash(self) -> str:
        return hashlib.sha256(self.config_json.encode()).hexdigest()[:16]

    @property
    def config_path(self) -> str:
        return f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE_NAME}"


def model_geometry(spec: DualPathClusterSpec) -> tuple[str, int, int]:
    """(name, layers, bytes per token per layer); the spec was validated beforehand."""
    model = spec.storage.model
    if model.preset is not None:
        preset = get_model_preset(model.preset)
        return preset.name, preset.layers, preset.bytes_per_token_layer
    assert model.layers is not None and model.bytes_per_token_layer is not None
    return "custom", model.layers, model.bytes_per_token_layer


def qos_config(qos: QosClass | None) -> Obj | None:
    if qos is None:
        return None
    return {
        "name": qos.name,
        "dscp": qos.dscp,
        "trafficClass": effective_traffic_class(qos),
        "serviceLevel": qos.service_level,
        "priority": qos.priority,
        "bandwidthPercent": qos.bandwidth_percent,
    }


def resolve_config(ctx: ClusterContext) -> Obj:
    """The configuration every agent and the controller read (ConfigMap dualpath.json):
    presets resolved to numbers, quantities to bytes, defaults filled in."""
    spec = ctx.spec
    name, layers, bptl = model_geometry(spec)
    storage, agent, ctl, net = spec.storage, spec.agent, spec.traffic_controller, spec.network
    return {
        "apiVersion": "dualpath.io/v1alpha1",
        "kind": "DualPathConfig",
        "cluster": {"name": ctx.name, "namespace": ctx.namespace},
        "model": {
            "name": name,
            "layers": layers,
            "bytesPerTokenLayer": bptl,
            "kvBytesPerToken": layers * bptl,
            "blockTokens": storage.block_tokens,
            "blockBytes": layers * bptl * storage.block_tokens,
        },
        "storage": {
            "backend": storage.backend,
            "path": storage.mount_path,
            "capacityBytes": quantity_bytes(storage.capacity),
            "storageNicGbps": storage.storage_nic_gbps,
            "readBandwidthCapGbps": storage.read_bandwidth_cap_gbps,
        },
        "nodes": {
            "prefill": {"gpusPerNode": spec.nodes.prefill.gpus_per_node},
            "decode": {"gpusPerNode": spec.nodes.decode.gpus_per_node},
        },
        "agent": {
            "grpcPort": agent.grpc_port,
            "metricsPort": agent.metrics_port,
            "hostBufferBytes": quantity_bytes(agent.host_buffer),
            "gpuMemoryBudgetBytes": quantity_bytes(agent.gpu_memory_budget),
            "service": f"{ctx.agents_service_name}.{ctx.namespace}.svc",
        },
        "network": {
            "kvCache": qos_config(ctx.qos_by_purpose.get("kvCache")),
            "collectives": qos_config(ctx.qos_by_purpose.get("collectives")),
            "gidIndex": net.gid_index,
            "tcpFallback": net.tcp_fallback,
            "attachments": [
                {"name": ctx.attachment_name(a.name), "interface": a.interface}
                for a in net.attachments
            ],
        },
        "trafficController": {
            "address": ctx.controller_address,
            "port": ctl.port,
            "metricsPort": ctl.metrics_port,
            "policy": ctl.policy,
            "parameters": ctl.parameters.model_dump(mode="json", by_alias=True),
            "policyParams": resolved_policy_params(spec),
            # Always: mutual TLS with the operator's or cert-manager's certificates.
            "tls": True,
        },
    }


# --- the child-kind plug-in shape --------------------------------------------------------

Builder = Callable[[ClusterContext], list[Obj]]
ResourceFor = Callable[[Capabilities], "ResourceType | None"]


@dataclass(frozen=True)
class ChildKind:
    """One kind of child: how to build it and where it lives.

    `resource(caps)` is None when the cluster does not serve the kind (e.g. no Multus CRD);
    `prune` kinds may come and go with the spec, so objects of them that the spec no longer
    asks for are deleted (only those labelled with `component`, when it is set). `phase` orders applies: identities and config before workloads.
    """

    name: str
    resource: ResourceFor
    build: Builder
    prune: bool = False
    phase: int = 0
    # Pruning deletes only this component's objects (several kinds share a resource: the
    # agent and engine DaemonSets, say); None: every object of the resource.
    component: str | None = None
