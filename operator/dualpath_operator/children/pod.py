"""Pod-template pieces shared by the agent DaemonSets and the controller Deployment."""

from __future__ import annotations

from dualpath_operator.api import EnvVar, ResourceRequirements
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.constants import ANNOTATION_CONFIG_HASH, CONFIG_MOUNT_DIR
from dualpath_operator.kube import Obj
from dualpath_operator.mtls import MTLS_MOUNT_DIR, leaf_secret_name


def http_probe(path: str, port: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def resources(spec: ResourceRequirements, extra_limits: dict[str, int] | None = None) -> Obj:
    out: Obj = {}
    if spec.requests:
        out["requests"] = {k: str(v) for k, v in spec.requests.items()}
    limits = {k: str(v) for k, v in spec.limits.items()}
    for name, count in (extra_limits or {}).items():
        limits[name] = str(count)
    if limits:
        out["limits"] = limits
    return out


def extra_env(env: list[EnvVar]) -> list[Obj]:
    return [{"name": e.name, "value": e.value or ""} for e in env]


def template_annotations(ctx: ClusterContext, metrics_port: int) -> dict[str, str]:
    # A changed resolved config changes this hash, which changes the pod template and so
    # rolls the pods: the config file is read at start only.
    return {ANNOTATION_CONFIG_HASH: ctx.config_hash, **metrics_annotations(ctx, metrics_port)}


def metrics_annotations(ctx: ClusterContext, metrics_port: int) -> dict[str, str]:
    if not ctx.spec.monitoring.metrics:
        return {}
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }


def config_volume(ctx: ClusterContext) -> tuple[Obj, Obj]:
    volume = {"name": "config", "configMap": {"name": ctx.config_map_name}}
    mount = {"name": "config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}
    return volume, mount


def mtls_volume(ctx: ClusterContext, role: str) -> tuple[Obj, Obj]:
    """The role's mutual-TLS identity (ca.crt, tls.crt, tls.key), whoever issued it
    (mtls.py). Not hashed into the pod template: a renewed certificate or a new CA bundle
    reaches the pod as swapped files, which the components re-read, so nothing rolls."""
    # 0440: the private key is not world-readable; the owner (root) or the fsGroup that
    # non-root pods run with (children/security.py) reads it.
    secret = {"secretName": leaf_secret_name(ctx.name, role), "defaultMode": 0o440}
    volume = {"name": "mtls", "secret": secret}
    mount = {"name": "mtls", "mountPath": MTLS_MOUNT_DIR, "readOnly": True}
    return volume, mount


def mtls_args() -> list[str]:
    """Every gRPC server and client in the pod uses the mounted identity. Mutual TLS
    replaces the controller's server-only TLS (spec.trafficController.tlsSecretName): the
    components take one or the other, and the operator never runs them unauthenticated."""
    return ["--tls-dir", MTLS_MOUNT_DIR]


def common_args(command: list[str], args: list[str], default: list[str], extra: list[str]) -> Obj:
    return {"command": list(command), "args": [*(args or default), *extra]}
