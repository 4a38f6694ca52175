"""ConfigMaps: the resolved cluster config every component reads, and the QoS knobs as
environment variables that inference-engine pods can import with `envFrom`."""

from __future__ import annotations

from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.children.env import collectives_env, kv_env
from dualpath_operator.constants import CONFIG_FILE_NAME
from dualpath_operator.kube import Obj, ResourceType

CONFIG_MAP = ResourceType("v1", "ConfigMap", "configmaps")


def config_map(ctx: ClusterContext) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(ctx.config_map_name, "config"),
        "data": {CONFIG_FILE_NAME: ctx.config_json},
    }


def qos_env_config_map(ctx: ClusterContext) -> Obj:
    env = {e["name"]: e["value"] for e in (*kv_env(ctx), *collectives_env(ctx))}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": ctx.metadata(ctx.qos_env_config_map_name, "config"),
        "data": dict(sorted(env.items())),
    }


def build(ctx: ClusterContext) -> list[Obj]:
    return [config_map(ctx), qos_env_config_map(ctx)]


KIND = ChildKind("configmap", lambda caps: CONFIG_MAP, build, phase=0)
