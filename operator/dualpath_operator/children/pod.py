"""Pod-template pieces shared by the agent DaemonSets and the controller Deployment."""

from __future__ import annotations

from dualpath_common.tls import CA_FILE, CERT_FILE, KEY_FILE

from dualpath_operator.api import EnvVar, ResourceRequirements
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.constants import (
    ANNOTATION_CONFIG_HASH,
    CONFIG_MOUNT_DIR,
    TLS_MOUNT_DIR,
)
from dualpath_operator.kube import Obj


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
    out = {ANNOTATION_CONFIG_HASH: ctx.config_hash}
    if ctx.spec.monitoring.metrics:
        out.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
            }
        )
    return out


def config_volume(ctx: ClusterContext) -> tuple[Obj, Obj]:
    volume = {"name": "config", "configMap": {"name": ctx.config_map_name}}
    mount = {"name": "config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}
    return volume, mount


def tls_volume(ctx: ClusterContext) -> tuple[Obj, Obj] | None:
    """The controller's TLS Secret, whole (it serves with tls.crt and tls.key)."""
    secret = ctx.spec.traffic_controller.tls_secret_name
    if not secret:
        return None
    volume = {"name": "tls", "secret": {"secretName": secret}}
    mount = {"name": "tls", "mountPath": TLS_MOUNT_DIR, "readOnly": True}
    return volume, mount


def tls_trust_volume(ctx: ClusterContext) -> tuple[Obj, Obj] | None:
    """What a client of the controller needs from its TLS Secret: the certificates, never
    the private key. ca.crt is optional in a kubernetes.io/tls Secret (absent for a
    self-signed certificate), hence `optional`: a missing key leaves its file out."""
    secret = ctx.spec.traffic_controller.tls_secret_name
    if not secret:
        return None
    items = [{"key": name, "path": name} for name in (CERT_FILE, CA_FILE)]
    volume = {
        "name": "controller-tls",
        "secret": {"secretName": secret, "items": items, "optional": True},
    }
    mount = {"name": "controller-tls", "mountPath": TLS_MOUNT_DIR, "readOnly": True}
    return volume, mount


def controller_tls_args(ctx: ClusterContext, side: str) -> list[str]:
    """TLS flags of the controller ("server") or of its clients ("client")."""
    if not ctx.spec.traffic_controller.tls_secret_name:
        return []
    if side == "server":
        return [
            "--tls-cert-file",
            f"{TLS_MOUNT_DIR}/{CERT_FILE}",
            "--tls-key-file",
            f"{TLS_MOUNT_DIR}/{KEY_FILE}",
        ]
    return ["--controller-tls-ca", TLS_MOUNT_DIR]


def common_args(command: list[str], args: list[str], default: list[str], extra: list[str]) -> Obj:
    return {"command": list(command), "args": [*(args or default), *extra]}
