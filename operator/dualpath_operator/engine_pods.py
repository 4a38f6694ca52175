"""The engine pods of a cluster as the operator observes them (pure).

Managed engines (the operator's DaemonSets) and attached ones (your own pods) carry the same
two labels, dualpath.io/cluster=<cluster> and dualpath.io/engine=<role>, and are read the
same way: a pod becomes an entry of the router's engines file once it is Ready, addressed by
its pod IP and HTTP port, with its node's agent at the node's IP and the agent's hostPort
(node-local: an engine is never paired with another node's agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dualpath_operator.constants import (
    ANNOTATION_ENGINE_PORT,
    LABEL_CLUSTER,
    LABEL_ENGINE,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
)

Obj = dict[str, Any]
ENGINE_ROLES = ("prefill", "decode")
HTTP_PORT_NAME = "http"


@dataclass(frozen=True)
class EnginePod:
    name: str
    role: str
    managed: bool
    ready: bool
    pod_ip: str
    port: int
    node: str
    host_ip: str
    # Why the pod cannot be served although it may run (a bad port annotation): such a pod
    # stays out of the router's file and is named in the EnginesReady condition.
    problem: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.pod_ip}:{self.port}"

    def agent(self, agent_port: int) -> str:
        return f"{self.host_ip}:{agent_port}"


def engine_selector(cluster: str) -> str:
    """Label selector of every engine pod of the cluster (managed and attached)."""
    return f"{LABEL_CLUSTER}={cluster},{LABEL_ENGINE}"


def engine_cluster(pod: Obj) -> tuple[str, str] | None:
    """(namespace, cluster) an engine pod belongs to, or None if it is not one."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    cluster, role = labels.get(LABEL_CLUSTER), labels.get(LABEL_ENGINE)
    if not cluster or role not in ENGINE_ROLES:
        return None
    return str(meta.get("namespace", "")), str(cluster)


def _http_port(pod: Obj, default_port: int) -> tuple[int, str]:
    """(the engine's HTTP port, a problem with it): the annotation, else the container port
    named http, else the cluster's spec.engines.port."""
    annotation = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ENGINE_PORT)
    if annotation is not None:
        text = str(annotation)
        if text.isdigit() and 0 < int(text) < 65536:
            return int(text), ""
        return 0, f"annotation {ANNOTATION_ENGINE_PORT}={text!r} is not a port number"
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == HTTP_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"]), ""
    return default_port, ""


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def observe_engine_pod(pod: Obj, default_port: int) -> EnginePod | None:
    """The engine a pod is, or None when it is not one (a bad role label, say)."""
    if engine_cluster(pod) is None:
        return None
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    port, problem = _http_port(pod, default_port)
    running = _ready(pod) and bool(status.get("podIP")) and bool(status.get("hostIP"))
    return EnginePod(
        name=str(meta.get("name", "")),
        role=str(labels[LABEL_ENGINE]),
        managed=labels.get(LABEL_MANAGED_BY) == MANAGED_BY_VALUE,
        ready=running and not problem,
        pod_ip=str(status.get("podIP", "")),
        port=port,
        node=str(spec.get("nodeName", "")),
        host_ip=str(status.get("hostIP", "")),
        problem=problem,
    )


def observe_engine_pods(pods: list[Obj], default_port: int) -> tuple[EnginePod, ...]:
    found = (observe_engine_pod(p, default_port) for p in pods)
    return tuple(sorted((e for e in found if e is not None), key=lambda e: (e.role, e.name)))


def pod_fingerprint(pod: Obj) -> tuple[Any, ...]:
    """What of an engine pod the operator acts on: an event that changes none of it (most
    status updates of a running pod) does not queue a reconcile."""
    engine = observe_engine_pod(pod, 0)
    return (engine, bool((pod.get("metadata") or {}).get("deletionTimestamp")))
