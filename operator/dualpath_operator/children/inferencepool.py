"""Gateway API Inference Extension: an InferencePool of the cluster's prefill engines, and
its endpoint picker (`dualpath picker`, an Envoy ext_proc server) as Deployment + Service.

Only where the cluster serves inference.networking.k8s.io/v1 InferencePool; elsewhere the
InferencePoolReady condition says it was skipped. The pool holds the prefill engines because
ext_proc names one destination: the picked prefill engine serves the whole request, loading
its cached prefix by the read path the traffic controller chose (the decode node's storage
NIC still serves DE_READ and SPLIT loads).
"""

from __future__ import annotations

from dualpath_operator.children import pod
from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.children.deployment import DEPLOYMENT
from dualpath_operator.children.router import (
    front_door_args,
    front_door_deployment,
    front_door_service,
)
from dualpath_operator.children.service import SERVICE
from dualpath_operator.constants import LABEL_CLUSTER, LABEL_ENGINE
from dualpath_operator.discovery import Capabilities
from dualpath_operator.kube import Obj, ResourceType

INFERENCE_POOL = ResourceType("inference.networking.k8s.io/v1", "InferencePool", "inferencepools")
COMPONENT = "picker"


def wanted(ctx: ClusterContext) -> bool:
    return ctx.spec.engines is not None and ctx.capabilities.inference_pools


def inference_pool(ctx: ClusterContext) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None
    return {
        "apiVersion": INFERENCE_POOL.api_version,
        "kind": INFERENCE_POOL.kind,
        "metadata": ctx.metadata(ctx.name, COMPONENT),
        "spec": {
            # Managed and attached prefill engines alike (the attach-mode labels).
            "selector": {"matchLabels": {LABEL_CLUSTER: ctx.name, LABEL_ENGINE: "prefill"}},
            "targetPorts": [{"number": engines.port}],
            "endpointPickerRef": {
                "name": ctx.picker_name,
                "port": {"number": engines.picker.port},
                # No picker, no routing: without the controller's choice a request would
                # land on an engine with no load parameters.
                "failureMode": "FailClose",
            },
        },
    }


def default_args(ctx: ClusterContext) -> list[str]:
    engines = ctx.spec.engines
    assert engines is not None
    picker = engines.picker
    return [
        *front_door_args(ctx, "picker", picker.port),
        "--metrics-port",
        str(picker.metrics_port),
        *picker.extra_args,
    ]


def picker_deployment(ctx: ClusterContext) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None
    picker = engines.picker
    # The picker calls the controller and the agents as the router does, with the router's
    # identity (it looks up prefixes and schedules; it never moves KV).
    container: Obj = {
        "name": "picker",
        "image": engines.router.image or ctx.spec.image,
        "imagePullPolicy": engines.router.image_pull_policy,
        "args": default_args(ctx),
        "ports": [
            {"name": "grpc", "containerPort": picker.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": picker.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": pod.http_probe("/readyz", "metrics", period=5, failures=3),
        "livenessProbe": pod.http_probe("/healthz", "metrics", period=10, failures=6),
    }
    return front_door_deployment(
        ctx,
        name=ctx.picker_name,
        component=COMPONENT,
        replicas=picker.replicas,
        container=container,
        metrics_port=picker.metrics_port,
        resources=picker.resources,
    )


def picker_service(ctx: ClusterContext) -> Obj:
    engines = ctx.spec.engines
    assert engines is not None
    # ext_proc is gRPC: HTTP/2 without TLS.
    port = {"name": "grpc", "port": engines.picker.port, "appProtocol": "kubernetes.io/h2c"}
    return front_door_service(ctx, name=ctx.picker_name, component=COMPONENT, port=port)


def pool_resource(caps: Capabilities) -> ResourceType | None:
    return INFERENCE_POOL if caps.inference_pools else None


POOL_KIND = ChildKind(
    "inferencepool",
    pool_resource,
    lambda ctx: [inference_pool(ctx)] if wanted(ctx) else [],
    prune=True,
    phase=1,
)
DEPLOYMENT_KIND = ChildKind(
    "picker-deployment",
    lambda caps: DEPLOYMENT,
    lambda ctx: [picker_deployment(ctx)] if wanted(ctx) else [],
    prune=True,
    phase=1,
    component=COMPONENT,
)
SERVICE_KIND = ChildKind(
    "picker-service",
    lambda caps: SERVICE,
    lambda ctx: [picker_service(ctx)] if wanted(ctx) else [],
    prune=True,
    component=COMPONENT,
)
