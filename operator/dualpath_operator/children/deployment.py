"""The traffic controller Deployment (the central request scheduler)."""

from __future__ import annotations

from dualpath_operator.children import pod, security
from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.children.env import pod_identity_env
from dualpath_operator.kube import Obj, ResourceType
from dualpath_operator.policy import resolved_policy_params

DEPLOYMENT = ResourceType("apps/v1", "Deployment", "deployments")
COMPONENT = "controller"
CONTROLLER_SCRATCH_SIZE = "64Mi"


def default_args(ctx: ClusterContext) -> list[str]:
    """`dualpath controller ...` (the traffic controller's CLI). The resolved config file is
    mounted too, for tools and future flags; spec.trafficController.args replaces these."""
    ctl = ctx.spec.traffic_controller
    args = [
        "controller",
        "--listen",
        f"0.0.0.0:{ctl.port}",
        "--metrics-host",
        "0.0.0.0",
        "--metrics-port",
        str(ctl.metrics_port),
        "--policy",
        ctl.policy,
    ]
    for name, value in sorted(resolved_policy_params(ctx.spec).items()):
        args += ["--policy-param", f"{name}={value}"]
    args += [
        "--liveness-timeout-s",
        f"{ctl.parameters.engine_timeout_seconds:g}",
        "--log-level",
        ctl.log_level.upper(),
        *pod.mtls_args(),
    ]
    return args


def controller_container(ctx: ClusterContext) -> Obj:
    ctl = ctx.spec.traffic_controller
    _, config_mount = pod.config_volume(ctx)
    _, scratch_mount = security.scratch_volume(CONTROLLER_SCRATCH_SIZE)
    mounts = [config_mount, scratch_mount]
    mounts.append(pod.mtls_volume(ctx, "controller")[1])
    container: Obj = {
        "name": "controller",
        "image": ctl.image or ctx.spec.image,
        "imagePullPolicy": ctl.image_pull_policy,
        **pod.common_args(ctl.command, ctl.args, default_args(ctx), ctl.extra_args),
        "ports": [
            {"name": "grpc", "containerPort": ctl.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ctl.metrics_port, "protocol": "TCP"},
        ],
        "env": [
            *pod_identity_env(),
            {"name": "DUALPATH_CLUSTER", "value": ctx.name},
            {"name": "DUALPATH_CONFIG", "value": ctx.config_path},
            {"name": "DUALPATH_LOG_LEVEL", "value": ctl.log_level},
            *pod.extra_env(ctl.extra_env),
        ],
        "volumeMounts": mounts,
        # Pod Security Standard "restricted" (with the pod-level context below).
        "securityContext": security.controller_container_security_context(),
        "readinessProbe": pod.http_probe("/readyz", "metrics", period=5, failures=3),
        "livenessProbe": pod.http_probe("/healthz", "metrics", period=10, failures=6),
    }
    res = pod.resources(ctl.resources)
    if res:
        container["resources"] = res
    return container


def controller_deployment(ctx: ClusterContext) -> Obj:
    ctl = ctx.spec.traffic_controller
    config_volume, _ = pod.config_volume(ctx)
    scratch, _ = security.scratch_volume(CONTROLLER_SCRATCH_SIZE)
    volumes = [config_volume, scratch]
    volumes.append(pod.mtls_volume(ctx, "controller")[0])
    selector = ctx.selector_labels(COMPONENT)
    pod_spec: Obj = {
        "serviceAccountName": ctx.controller_name,
        "securityContext": security.controller_pod_security_context(),
        "containers": [controller_container(ctx)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if ctl.replicas > 1:
        # Spread replicas over nodes so one node failure does not take the scheduler down.
        pod_spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector},
                        },
                    }
                ]
            }
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(ctx.controller_name, COMPONENT),
        "spec": {
            "replicas": ctl.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": ctx.labels(COMPONENT),
                    "annotations": pod.template_annotations(ctx, ctl.metrics_port),
                },
                "spec": pod_spec,
            },
        },
    }


def build(ctx: ClusterContext) -> list[Obj]:
    return [controller_deployment(ctx)]


KIND = ChildKind("deployment", lambda caps: DEPLOYMENT, build, phase=1)
