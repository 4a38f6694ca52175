"""The engines' two ConfigMaps.

`<cluster>-connector`: the DualPath KV connector's settings as vLLM's --kv-transfer-config,
in the variable DUALPATH_KV_TRANSFER_CONFIG. Managed and attached engines import it the same
way (envFrom, then `--kv-transfer-config $(DUALPATH_KV_TRANSFER_CONFIG)`); the connector
expands ${DUALPATH_HOST_IP} and ${DUALPATH_ENGINE_ID} from the engine's own environment
(downward API), which is what makes the agent address node-local.

`<cluster>-engines`: the router's engines file, one entry per Ready engine pod (observed,
`engine_pods.py`); the router reads it again whenever the kubelet swaps the file.
"""

from __future__ import annotations

import hashlib
import json

import yaml
from dualpath_vllm.config import kv_transfer_config as connector_kv_transfer_config

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.children.configmap import CONFIG_MAP
from dualpath_operator.kube import Obj
from dualpath_operator.mtls import MTLS_MOUNT_DIR

COMPONENT = "engines-config"
KV_TRANSFER_CONFIG_VAR = "DUALPATH_KV_TRANSFER_CONFIG"
HOST_IP_VAR = "DUALPATH_HOST_IP"
ENGINE_ID_VAR = "DUALPATH_ENGINE_ID"
ENGINES_FILE = "engines.yaml"
ENGINES_MOUNT_DIR = "/etc/dualpath-engines"


def kv_transfer_config(ctx: ClusterContext) -> Obj:
    """vLLM's --kv-transfer-config for every engine of the cluster, made by the connector's
    own helper (engines/dualpath_vllm/config.py reads it back)."""
    assert ctx.spec.engines is not None
    return connector_kv_transfer_config(
        f"${{{HOST_IP_VAR}}}:{ctx.spec.agent.grpc_port}",
        f"${{{ENGINE_ID_VAR}}}",
        tls_dir=MTLS_MOUNT_DIR,
        hash_namespace=ctx.served_model_name,
        load_mode=ctx.spec.engines.load_mode,
    )


def connector_env(ctx: ClusterContext) -> dict[str, str]:
    return {KV_TRANSFER_CONFIG_VAR: json.dumps(kv_transfer_config(ctx), sort_keys=True)}


def connector_hash(ctx: ClusterContext) -> str:
    """Hashed into the managed engines' pod template: vLLM reads its settings at start."""
    text = json.dumps(connector_env(ctx), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def connector_config_map(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(ctx.connector_config_map_name, COMPONENT),
        "data": connector_env(ctx),
    }


def engines_file(ctx: ClusterContext) -> str:
    """The router's --engines-file: the Ready engines, sorted (a stable file changes only
    when the engines do)."""
    agent_port = ctx.spec.agent.grpc_port
    entries = [
        {
            "id": pod.name,
            "role": pod.role,
            "url": pod.url,
            "node": pod.node,
            "agent": pod.agent(agent_port),
        }
        for pod in ctx.engine_pods
        if pod.ready
    ]
    return yaml.safe_dump({"engines": entries}, sort_keys=True)


def engines_config_map(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(ctx.engines_config_map_name, COMPONENT),
        "data": {ENGINES_FILE: engines_file(ctx)},
    }


def engines_volume(ctx: ClusterContext) -> tuple[Obj, Obj]:
    volume = {"name": "engines", "configMap": {"name": ctx.engines_config_map_name}}
    mount = {"name": "engines", "mountPath": ENGINES_MOUNT_DIR, "readOnly": True}
    return volume, mount


def build(ctx: ClusterContext) -> list[Obj]:
    if ctx.spec.engines is None:
        return []
    return [connector_config_map(ctx), engines_config_map(ctx)]


KIND = ChildKind("engines-config", lambda caps: CONFIG_MAP, build, prune=True, component=COMPONENT)
