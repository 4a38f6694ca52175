"""Agent DaemonSets, one per role (prefill, decode), on the nodes each pool selects."""

from __future__ import annotations

import json

from dualpath_operator.children import pod, security
from dualpath_operator.children.common import ROLES, ChildKind, ClusterContext
from dualpath_operator.children.env import collectives_env, kv_env, pod_identity_env
from dualpath_operator.constants import MULTUS_ANNOTATION
from dualpath_operator.kube import Obj, ResourceType
from dualpath_operator.quantity import quantity_bytes
from dualpath_operator.validation import effective_traffic_class

DAEMON_SET = ResourceType("apps/v1", "DaemonSet", "daemonsets")
COMPONENT = "agent"
# The agent's /tmp (the root filesystem is read-only): room for UCX/NIXL scratch files.
AGENT_SCRATCH_SIZE = "256Mi"


def default_args(ctx: ClusterContext, role: str) -> list[str]:
    """`dualpath agent ...` (the agent's CLI); $(VAR) expands from the container env.
    spec.agent.args replaces these, spec.agent.extraArgs appends to them."""
    spec, agent = ctx.spec, ctx.spec.agent
    pool = spec.nodes.prefill if role == "prefill" else spec.nodes.decode
    args = [
        "agent",
        "--node",
        "$(NODE_NAME)",
        "--role",
        role,
        "--store",
        spec.storage.mount_path,
        "--capacity",
        str(quantity_bytes(spec.storage.capacity)),
        # The pod IP, not 0.0.0.0: the agent advertises this address to its peers and the
        # controller, and serves /readyz there for the kubelet's probes.
        "--listen",
        f"$(POD_IP):{agent.grpc_port}",
        "--metrics-port",
        str(agent.metrics_port),
        "--buffer-bytes",
        str(quantity_bytes(agent.host_buffer)),
        "--controller",
        ctx.controller_address,
        *pod.mtls_args(),
    ]
    kv = ctx.qos_by_purpose.get("kvCache")
    if kv is not None:
        args += ["--traffic-class", str(effective_traffic_class(kv))]
        args += ["--service-level", str(kv.service_level), "--dscp", str(kv.dscp)]
    if quantity_bytes(agent.gpu_memory_budget) > 0:
        args += ["--device-bytes", str(quantity_bytes(agent.gpu_memory_budget))]
    if spec.storage.read_bandwidth_cap_gbps:
        args += ["--snic-read-gbps", f"{spec.storage.read_bandwidth_cap_gbps:g}"]
    if spec.engines is None:
        # Engines wired by hand: the agent registers one per GPU and reports their load.
        for gpu in range(pool.gpus_per_node):
            args += ["--engine", f"$(NODE_NAME)-gpu{gpu}"]
    else:
        # The router registers the real engines; a placeholder would be scheduled and fail.
        args.append("--no-engines")
    return [*args, "--log-level", agent.log_level.upper()]


def multus_networks(ctx: ClusterContext) -> str:
    networks = []
    for att in ctx.spec.network.attachments:
        entry = {"name": ctx.attachment_name(att.name), "namespace": ctx.namespace}
        if att.interface:
            entry["interface"] = att.interface
        networks.append(entry)
    return json.dumps(networks, separators=(",", ":"))


def rdma_limits(ctx: ClusterContext) -> dict[str, int]:
    limits: dict[str, int] = {}
    for att in ctx.spec.network.attachments:
        if att.rdma_resource:
            limits[att.rdma_resource] = limits.get(att.rdma_resource, 0) + att.rdma_resource_count
    return limits


def storage_volume(ctx: ClusterContext) -> tuple[Obj, Obj]:
    storage = ctx.spec.storage
    volume: Obj = {"name": "kv-store"}
    if storage.backend == "pvc":
        assert storage.pvc is not None  # validated
        volume["persistentVolumeClaim"] = {
            "claimName": storage.pvc.claim_name,
            "readOnly": storage.pvc.read_only,
        }
    else:
        # A local NVMe directory may be created; a shared filesystem must already be
        # mounted, or agents would write to the node's root disk unnoticed.
        kind = "DirectoryOrCreate" if storage.backend == "hostPath" else "Directory"
        volume["hostPath"] = {"path": storage.path, "type": kind}
    mount = {"name": "kv-store", "mountPath": storage.mount_path}
    return volume, mount


def security_context(ctx: ClusterContext) -> Obj:
    # Root with IPC_LOCK only (hostPath, or asked for), else non-root with nothing added;
    # the reasons are in children/security.py.
    return security.agent_container_security_context(ctx.spec)


def node_affinity(ctx: ClusterContext, role: str) -> Obj | None:
    pool = ctx.spec.nodes.prefill if role == "prefill" else ctx.spec.nodes.decode
    if not pool.match_expressions:
        return None
    expressions = [e.model_dump(mode="json", by_alias=True) for e in pool.match_expressions]
    for e in expressions:
        if not e["values"]:
            del e["values"]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def grpc_port(ctx: ClusterContext) -> Obj:
    port: Obj = {"name": "grpc", "containerPort": ctx.spec.agent.grpc_port, "protocol": "TCP"}
    if ctx.spec.engines is not None and not ctx.spec.agent.host_network:
        # Engines reach their own node's agent at <node IP>:<this port> (children/engines.py):
        # an address every engine pod learns from the downward API, stable across agent
        # restarts, and never another node's agent.
        port["hostPort"] = ctx.spec.agent.grpc_port
    return port


def agent_container(ctx: ClusterContext, role: str) -> Obj:
    agent = ctx.spec.agent
    _, config_mount = pod.config_volume(ctx)
    _, store_mount = storage_volume(ctx)
    _, scratch_mount = security.scratch_volume(AGENT_SCRATCH_SIZE)
    mounts = [config_mount, store_mount, scratch_mount]
    mounts.append(pod.mtls_volume(ctx, "agent")[1])
    env = [
        *pod_identity_env(),
        {"name": "DUALPATH_ROLE", "value": role},
        {"name": "DUALPATH_CLUSTER", "value": ctx.name},
        {"name": "DUALPATH_CONFIG", "value": ctx.config_path},
        {"name": "DUALPATH_CONTROLLER_ADDRESS", "value": ctx.controller_address},
        {"name": "DUALPATH_LOG_LEVEL", "value": agent.log_level},
        *kv_env(ctx),
        *collectives_env(ctx),
        *pod.extra_env(agent.extra_env),
    ]
    container: Obj = {
        "name": "agent",
        "image": agent.image or ctx.spec.image,
        "imagePullPolicy": agent.image_pull_policy,
        **pod.common_args(agent.command, agent.args, default_args(ctx, role), agent.extra_args),
        "ports": [
            grpc_port(ctx),
            {"name": "metrics", "containerPort": agent.metrics_port, "protocol": "TCP"},
        ],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": security_context(ctx),
        "readinessProbe": pod.http_probe("/readyz", "metrics", period=5, failures=3),
        "livenessProbe": pod.http_probe("/healthz", "metrics", period=10, failures=6),
    }
    res = pod.resources(agent.resources, rdma_limits(ctx))
    if res:
        container["resources"] = res
    return container


def agent_daemonset(ctx: ClusterContext, role: str) -> Obj:
    agent = ctx.spec.agent
    pool = ctx.spec.nodes.prefill if role == "prefill" else ctx.spec.nodes.decode
    annotations = pod.template_annotations(ctx, agent.metrics_port)
    if ctx.spec.network.attachments:
        annotations[MULTUS_ANNOTATION] = multus_networks(ctx)
    config_volume, _ = pod.config_volume(ctx)
    store_volume, _ = storage_volume(ctx)
    scratch, _ = security.scratch_volume(AGENT_SCRATCH_SIZE)
    volumes = [config_volume, store_volume, scratch]
    volumes.append(pod.mtls_volume(ctx, "agent")[0])
    pod_spec: Obj = {
        "serviceAccountName": ctx.agent_service_account,
        # Agents do not talk to the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": security.agent_pod_security_context(ctx.spec),
        "nodeSelector": dict(pool.node_selector),
        "tolerations": [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in pool.tolerations
        ],
        "containers": [agent_container(ctx, role)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    affinity = node_affinity(ctx, role)
    if affinity:
        pod_spec["affinity"] = affinity
    if agent.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if agent.priority_class_name:
        pod_spec["priorityClassName"] = agent.priority_class_name
    strategy: Obj = {"type": agent.update_strategy.type}
    if agent.update_strategy.type == "RollingUpdate":
        strategy["rollingUpdate"] = {"maxUnavailable": agent.update_strategy.max_unavailable}
    selector = ctx.selector_labels(COMPONENT, role)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": ctx.metadata(ctx.agent_daemonset_name(role), COMPONENT, role),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": strategy,
            "template": {
                "metadata": {"labels": ctx.labels(COMPONENT, role), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def build(ctx: ClusterContext) -> list[Obj]:
    return [agent_daemonset(ctx, role) for role in ROLES]


KIND = ChildKind("daemonset", lambda caps: DAEMON_SET, build, phase=1)
