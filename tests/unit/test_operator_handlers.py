"""Event filters: which watch events lead to a reconcile (and which must not)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from dualpath_operator.handlers import OperatorRuntime, fingerprint, owner_cluster
from dualpath_operator.workqueue import WorkQueue


class _Forgetful:
    def forget(self, key: Any) -> None:
        self.forgotten = key


class _Caps:
    invalidated = 0

    def invalidate(self) -> None:
        self.invalidated += 1


def child(rv: str = "1", data: str = "x") -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {
            "name": "demo-config",
            "namespace": "ns",
            "resourceVersion": rv,
            "managedFields": [{"manager": "m", "time": rv}],
            "labels": {
                "app.kubernetes.io/managed-by": "dualpath-operator",
                "dualpath.io/cluster": "demo",
            },
            "ownerReferences": [{"kind": "DualPathCluster", "name": "demo", "controller": True}],
        },
        "data": {"k": data},
    }


def cluster(generation: int, observed: int | None) -> dict[str, Any]:
    status = {} if observed is None else {"observedGeneration": observed}
    return {
        "metadata": {"name": "demo", "namespace": "ns", "generation": generation},
        "status": status,
    }


async def _runtime() -> tuple[OperatorRuntime, WorkQueue, _Caps]:
    async def worker(key: Any) -> None:
        return None

    q = WorkQueue(worker)
    caps = _Caps()
    return OperatorRuntime(_Forgetful(), q, caps), q, caps  # type: ignore[arg-type]


async def test_child_events_matter_only_when_content_changes():
    rt, q, _ = await _runtime()
    assert rt.on_child_event(None, child("1"))
    assert not rt.on_child_event("MODIFIED", child("2"))  # only rv/managedFields moved
    assert rt.on_child_event("MODIFIED", child("3", data="edited"))
    assert rt.on_child_event("DELETED", child("3", data="edited"))
    assert fingerprint(child("1")) == fingerprint(child("9"))
    assert len(q) == 1 and ("ns", "demo") in q._dirty


async def test_foreign_objects_are_ignored():
    rt, q, _ = await _runtime()
    foreign = child()
    foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "helm"
    assert owner_cluster(foreign) is None
    assert not rt.on_child_event(None, foreign)
    orphan = copy.deepcopy(child())
    orphan["metadata"]["ownerReferences"] = []
    assert not rt.on_child_event(None, orphan)
    assert len(q) == 0


async def test_cluster_events_ignore_our_own_status_writes():
    rt, q, _ = await _runtime()
    assert rt.on_cluster_event(None, cluster(1, None))  # initial listing
    q._dirty.clear()
    assert not rt.on_cluster_event("MODIFIED", cluster(1, 1))  # status write of ours
    assert rt.on_cluster_event("MODIFIED", cluster(2, 1))  # spec edit
    q._dirty.clear()
    assert not rt.on_cluster_event("DELETED", cluster(2, 2))
    assert rt.reconciler.forgotten == ("ns", "demo")  # type: ignore[attr-defined]
    assert rt.clusters == []


async def test_addon_crd_events_rediscover_and_requeue_every_cluster():
    rt, q, caps = await _runtime()
    rt.on_cluster_event(None, cluster(1, 1))
    q._dirty.clear()
    assert not rt.on_crd_event("ADDED", {"metadata": {"name": "widgets.example.com"}})
    assert rt.on_crd_event(
        "ADDED", {"metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"}}
    )
    assert caps.invalidated == 1 and ("ns", "demo") in q._dirty
    await asyncio.sleep(0)


def engine_pod(ready: str = "True", ip: str = "10.244.1.7", role: str = "decode") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": "mine-0",
            "namespace": "ns",
            "resourceVersion": ip + ready,
            "labels": {"dualpath.io/cluster": "demo", "dualpath.io/engine": role},
        },
        "spec": {"nodeName": "node-b", "containers": [{"name": "vllm"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "10.244.1.1",
            "conditions": [{"type": "Ready", "status": ready}],
        },
    }


async def test_engine_pod_events_queue_their_cluster_only_when_what_the_router_needs_changed():
    rt, q, _ = await _runtime()
    assert rt.on_engine_pod_event("ADDED", engine_pod("False"))
    assert not rt.on_engine_pod_event("MODIFIED", engine_pod("False"))  # nothing we read moved
    assert rt.on_engine_pod_event("MODIFIED", engine_pod("True"))  # became Ready
    assert rt.on_engine_pod_event("MODIFIED", engine_pod("True", ip="10.244.1.8"))
    assert rt.on_engine_pod_event("DELETED", engine_pod("True", ip="10.244.1.8"))
    assert not rt.on_engine_pod_event("ADDED", engine_pod(role="both"))  # not an engine role
    assert ("ns", "demo") in q._dirty or ("ns", "demo") in q._timers
