"""Managed vLLM engines: one DaemonSet per role and instance index, on the role's nodes
beside that node's agent.

Each engine imports the connector ConfigMap (`engines_config.py`) exactly like an attached
engine would, and learns its node's IP from the downward API: its connector dials
`<node IP>:<agent hostPort>`, the agent of its own node and no other.
"""

from __future__ import annotations

from dualpath_operator.children import pod, security
from dualpath_operator.children.common import ROLES, ChildKind, ClusterContext
from dualpath_operator.children.daemonset import DAEMON_SET, node_affinity
from dualpath_operator.children.engines_config import (
    ENGINE_ID_VAR,
    HOST_IP_VAR,
    KV_TRANSFER_CONFIG_VAR,
    connector_hash,
)
from dualpath_operator.children.env import field_ref, pod_identity_env
from dualpath_operator.constants import LABEL_ENGINE
from dualpath_operator.engine_pods import HTTP_PORT_NAME
from dualpath_operator.kube import Obj

COMPONENT = "engine"
MODEL_MOUNT_DIR = "/models"
# vLLM's processes share tensors through /dev/shm; a container's default is 64 MiB (vLLM
# asks for 160 MiB at start on CPU).
SHM_SIZE = "1Gi"
# HOME inside the scratch volume: vLLM and torch write caches under it, and the root
# filesystem is read-only.
ENGINE_SCRATCH_SIZE = "4Gi"
ENGINE_HOME = "/tmp/home"
ANNOTATION_CONNECTOR_HASH = "dualpath.io/connector-hash"


def model_dir(ctx: ClusterContext) -> str:
    engines = ctx.spec.engines
    assert engines is not None and engines.model is not None  # validated
    model = engines.model
    if model.generated and not model.path:
        return f"{MODEL_MOUNT_DIR}/{model.generated}"
    return f"{MODEL_MOUNT_DIR}/{model.path or ''}".rstrip("/")


def model_volume(ctx: ClusterContext) -> Obj:
    assert ctx.spec.engines is not None and ctx.spec.engines.model is not None
    model = ctx.spec.engines.model
    if model.pvc is not None:
        return {
            "name": "model",
            "persistentVolumeClaim": {"claimName": model.pvc.claim_name, "readOnly": True},
        }
    if model.host_path is not None:
        return {"name": "model", "hostPath": {"path": model.host_path, "type": "Directory"}}
    return {"name": "model", "emptyDir": {}}


def default_args(ctx: ClusterContext, role: str) -> list[str]:
    engines = ctx.spec.engines
    assert engines is not None
    role_spec = engines.prefill if role == "prefill" else engines.decode
    return [
        "--model",
        model_dir(ctx),
        "--served-model-name",
        ctx.served_model_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(engines.port),
        # The connector hashes whole vLLM blocks: they must be the store's blocks.
        "--block-size",
        str(ctx.spec.storage.block_tokens),
        "--kv-transfer-config",
        f"$({KV_TRANSFER_CONFIG_VAR})",
        *engines.extra_args,
        *role_spec.extra_args,
    ]


def engine_container(ctx: ClusterContext, role: str) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None and engines.image is not None
    role_spec = engines.prefill if role == "prefill" else engines.decode
    _, mtls_mount = pod.mtls_volume(ctx, "engine")
    container: Obj = {
        "name": "vllm",
        "image": engines.image,
        "imagePullPolicy": engines.image_pull_policy,
        # The image's entrypoint is vLLM's OpenAI server (Dockerfile.engine, cpu and gpu).
        "args": default_args(ctx, role),
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": engines.port, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": ctx.connector_config_map_name}}],
        "env": [
            *pod_identity_env(),
            field_ref(HOST_IP_VAR, "status.hostIP"),
            field_ref(ENGINE_ID_VAR, "metadata.name"),
            {"name": "DUALPATH_ROLE", "value": role},
            {"name": "DUALPATH_CLUSTER", "value": ctx.name},
            *offline_env(),
            *pod.extra_env(engines.extra_env),
        ],
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT_DIR, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            security.scratch_volume(ENGINE_SCRATCH_SIZE)[1],
            mtls_mount,
        ],
        "securityContext": security.engine_container_security_context(),
        # Loading a model takes minutes on big ones: the startup probe allows 20 minutes,
        # after which liveness takes over.
        "startupProbe": pod.http_probe("/health", HTTP_PORT_NAME, period=5, failures=240),
        "readinessProbe": pod.http_probe("/health", HTTP_PORT_NAME, period=5, failures=3),
        "livenessProbe": pod.http_probe("/health", HTTP_PORT_NAME, period=10, failures=6),
    }
    res = pod.resources(role_spec.resources)
    if res:
        container["resources"] = res
    return container


def offline_env() -> list[Obj]:
    return [
        {"name": "HOME", "value": ENGINE_HOME},
        # Never reach out: no usage reports, no model hub.
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def model_init_container(ctx: ClusterContext) -> Obj:
    """Writes the generated test model into the pod's model volume."""
    engines = ctx.spec.engines
    assert engines is not None and engines.image is not None
    return {
        "name": "make-model",
        "image": engines.image,
        "imagePullPolicy": engines.image_pull_policy,
        "command": ["python3", "-m", "dualpath_vllm.model", model_dir(ctx)],
        "env": offline_env(),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT_DIR},
            security.scratch_volume(ENGINE_SCRATCH_SIZE)[1],
        ],
        "securityContext": security.engine_container_security_context(),
    }


def engine_daemonset(ctx: ClusterContext, role: str, instance: int) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None and engines.model is not None
    pool = ctx.spec.nodes.prefill if role == "prefill" else ctx.spec.nodes.decode
    mtls_volume, _ = pod.mtls_volume(ctx, "engine")
    # Not the cluster config's hash (engines do not read that file): the connector's.
    annotations = {ANNOTATION_CONNECTOR_HASH: connector_hash(ctx)}
    annotations.update(pod.metrics_annotations(ctx, engines.port))
    pod_spec: Obj = {
        # Engines do not talk to the Kubernetes API: no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": security.engine_pod_security_context(),
        "nodeSelector": dict(pool.node_selector),
        "tolerations": [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in pool.tolerations
        ],
        "containers": [engine_container(ctx, role)],
        "volumes": [
            model_volume(ctx),
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
            security.scratch_volume(ENGINE_SCRATCH_SIZE)[0],
            mtls_volume,
        ],
        "terminationGracePeriodSeconds": 60,
    }
    if engines.model.generated:
        pod_spec["initContainers"] = [model_init_container(ctx)]
    affinity = node_affinity(ctx, role)
    if affinity:
        pod_spec["affinity"] = affinity
    extra = {LABEL_ENGINE: role}
    selector = {**ctx.selector_labels(COMPONENT, role), "dualpath.io/instance": str(instance)}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": ctx.metadata(
            ctx.engine_daemonset_name(role, instance), COMPONENT, role, labels=extra
        ),
        "spec": {
            "selector": {"matchLabels": selector},
            # One engine of a node at a time: the others keep serving while it restarts.
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": {**ctx.labels(COMPONENT, role), **selector, **extra},
                    "annotations": annotations,
                },
                "spec": pod_spec,
            },
        },
    }


def instances(ctx: ClusterContext) -> list[tuple[str, int]]:
    engines = ctx.spec.engines
    if engines is None:
        return []
    out = []
    for role in ROLES:
        role_spec = engines.prefill if role == "prefill" else engines.decode
        out += [(role, i) for i in range(role_spec.instances_per_node)]
    return out


def build(ctx: ClusterContext) -> list[Obj]:
    return [engine_daemonset(ctx, role, i) for role, i in instances(ctx)]


KIND = ChildKind(
    "engine-daemonset", lambda caps: DAEMON_SET, build, prune=True, phase=1, component=COMPONENT
)
