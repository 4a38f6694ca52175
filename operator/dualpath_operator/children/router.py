"""The router (`dualpath router`): Deployment and Service in front of the engines.

It registers the engines of the engines file (`engines_config.py`) with the traffic
controller, reports their load, and serves OpenAI requests by the controller's choice.
"""

from __future__ import annotations

from dualpath_operator.api import ResourceRequirements
from dualpath_operator.children import pod, security
from dualpath_operator.children.common import ChildKind, ClusterContext, model_geometry
from dualpath_operator.children.deployment import DEPLOYMENT
from dualpath_operator.children.engines_config import ENGINES_FILE, engines_volume
from dualpath_operator.children.env import pod_identity_env
from dualpath_operator.children.service import SERVICE
from dualpath_operator.kube import Obj

COMPONENT = "router"
FRONT_DOOR_SCRATCH_SIZE = "64Mi"


def front_door_args(ctx: ClusterContext, command: str, port: int) -> list[str]:
    """`dualpath router|picker ...`: they share their flags (router/dualpath_router/cli.py)."""
    _, engines_mount = engines_volume(ctx)
    _, layers, bytes_per_token_layer = model_geometry(ctx.spec)
    return [
        command,
        "--listen",
        f"0.0.0.0:{port}",
        "--controller",
        ctx.controller_address,
        *pod.mtls_args(),
        "--engines-file",
        f"{engines_mount['mountPath']}/{ENGINES_FILE}",
        "--block-tokens",
        str(ctx.spec.storage.block_tokens),
        "--hash-namespace",
        ctx.served_model_name,
        "--kv-bytes-per-token",
        str(layers * bytes_per_token_layer),
        "--json-logs",
    ]


def default_args(ctx: ClusterContext) -> list[str]:
    engines = ctx.spec.engines
    assert engines is not None
    router = engines.router
    return [
        *front_door_args(ctx, "router", router.port),
        "--log-level",
        router.log_level.upper(),
        *router.extra_args,
    ]


def front_door_deployment(
    ctx: ClusterContext,
    *,
    name: str,
    component: str,
    replicas: int,
    container: Obj,
    metrics_port: int,
    resources: ResourceRequirements,
) -> Obj:
    """A Deployment of the DualPath image that reads the engines file and calls the
    controller and the agents as a router (the router itself, the endpoint picker): the
    file, the router identity and a /tmp are mounted into `container`."""
    engines_vol, engines_mount = engines_volume(ctx)
    mtls_vol, mtls_mount = pod.mtls_volume(ctx, "router")
    scratch, scratch_mount = security.scratch_volume(FRONT_DOOR_SCRATCH_SIZE)
    container = {
        **container,
        "command": ["dualpath"],
        "env": [*pod_identity_env(), {"name": "DUALPATH_CLUSTER", "value": ctx.name}],
        "volumeMounts": [engines_mount, mtls_mount, scratch_mount],
        "securityContext": security.controller_container_security_context(),
    }
    res = pod.resources(resources)
    if res:
        container["resources"] = res
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": ctx.selector_labels(component)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": ctx.labels(component),
                    "annotations": pod.metrics_annotations(ctx, metrics_port),
                },
                "spec": {
                    # Front doors do not talk to the Kubernetes API: no token in the pod.
                    "automountServiceAccountToken": False,
                    "securityContext": security.controller_pod_security_context(),
                    "containers": [container],
                    "volumes": [engines_vol, mtls_vol, scratch],
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
    }


def router_deployment(ctx: ClusterContext) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None
    router = engines.router
    container: Obj = {
        "name": "router",
        "image": router.image or ctx.spec.image,
        "imagePullPolicy": router.image_pull_policy,
        "args": default_args(ctx),
        "ports": [{"name": "http", "containerPort": router.port, "protocol": "TCP"}],
        # /healthz: the controller answers and a prefill and a decode engine are known.
        "readinessProbe": pod.http_probe("/healthz", "http", period=5, failures=3),
        "livenessProbe": {
            "tcpSocket": {"port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
    }
    return front_door_deployment(
        ctx,
        name=ctx.router_name,
        component=COMPONENT,
        replicas=router.replicas,
        container=container,
        metrics_port=router.port,
        resources=router.resources,
    )


def front_door_service(
    ctx: ClusterContext, *, name: str, component: str, port: Obj, service_type: str = "ClusterIP"
) -> Obj:
    """The Service in front of a front-door Deployment: one named port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(name, component),
        "spec": {
            "type": service_type,
            "selector": ctx.selector_labels(component),
            "ports": [{**port, "targetPort": port["name"], "protocol": "TCP"}],
        },
    }


def router_service(ctx: ClusterContext) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None
    return front_door_service(
        ctx,
        name=ctx.router_name,
        component=COMPONENT,
        port={"name": "http", "port": engines.router.port},
        service_type=engines.router.service_type,
    )


def build_deployment(ctx: ClusterContext) -> list[Obj]:
    return [] if ctx.spec.engines is None else [router_deployment(ctx)]


def build_service(ctx: ClusterContext) -> list[Obj]:
    return [] if ctx.spec.engines is None else [router_service(ctx)]


DEPLOYMENT_KIND = ChildKind(
    "router-deployment",
    lambda caps: DEPLOYMENT,
    build_deployment,
    prune=True,
    phase=1,
    component=COMPONENT,
)
SERVICE_KIND = ChildKind(
    "router-service", lambda caps: SERVICE, build_service, prune=True, component=COMPONENT
)
