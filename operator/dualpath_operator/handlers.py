"""kopf wiring: watch DualPathClusters, their children and the add-on CRDs, and turn every
relevant event into "reconcile this cluster" on the work queue.

kopf provides the watches (with reconnects, resource discovery, namespace scoping) and the
operator lifecycle; the reconcile itself is ours (`reconciler.py`), run from a work queue
so that a burst of events for one cluster becomes one reconcile and two reconciles of one
cluster never overlap. Handlers here only filter and enqueue: they are cheap and never
write to the API server, so they cannot start a feedback loop.

Filters: a DualPathCluster event matters when its generation changed (spec edits) or the
status does not cover the current generation; its own status writes are ignored. A child
event matters when the child was deleted or its content changed; changes only in
resourceVersion/managedFields (e.g. a no-op apply) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable
from typing import Any

import kopf

from dualpath_operator import metrics
from dualpath_operator.constants import (
    GROUP,
    KIND,
    LABEL_CLUSTER,
    LABEL_ENGINE,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    PLURAL,
    VERSION,
)
from dualpath_operator.engine_pods import engine_cluster, pod_fingerprint
from dualpath_operator.kube import load_configuration
from dualpath_operator.reconciler import CapabilityCache, Key, Reconciler
from dualpath_operator.workqueue import WorkQueue

log = logging.getLogger("dualpath.operator.handlers")

# (group-or-version, plural) as kopf selectors; versionless means the preferred version, so
# PodDisruptionBudgets are watched as policy/v1 where served, else v1beta1.
CHILD_SELECTORS: tuple[tuple[str, str], ...] = (
    ("v1", "configmaps"),
    ("v1", "services"),
    ("v1", "serviceaccounts"),
    # The CA and certificate Secrets (operator-issued mTLS): a deleted or edited one is
    # re-issued at once rather than at the next resync.
    ("v1", "secrets"),
    ("apps", "daemonsets"),
    ("apps", "deployments"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("policy", "poddisruptionbudgets"),
    # Built in (never removed like an add-on CRD): an edited policy is put back at once.
    ("networking.k8s.io", "networkpolicies"),
)
# Not watched: NetworkAttachmentDefinitions, ServiceMonitors and cert-manager Issuers and
# Certificates. Their CRDs may be removed
# at any time, and kopf stops the whole operator when a watched resource disappears
# mid-watch. Their drift is repaired by the periodic resync, and their CRDs' arrival or
# removal re-queues every cluster (ADDON_CRDS below).
# CRDs whose arrival or removal changes what the operator can create.
ADDON_CRDS = frozenset(
    {
        "network-attachment-definitions.k8s.cni.cncf.io",
        "servicemonitors.monitoring.coreos.com",
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "inferencepools.inference.networking.k8s.io",
    }
)


def fingerprint(obj: dict[str, Any]) -> str:
    """Digest of an object's content, ignoring fields that change on every write."""
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("resourceVersion", "managedFields")
    }
    content = {**obj, "metadata": meta}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def owner_cluster(obj: dict[str, Any]) -> str | None:
    """The DualPathCluster controlling this object, if it is one of ours."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY_VALUE or not labels.get(LABEL_CLUSTER):
        return None
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller") and ref.get("name"):
            return str(ref["name"])
    return None


class OperatorRuntime:
    """Event filters and the queue they feed (no kopf types: unit-testable)."""

    def __init__(
        self, reconciler: Reconciler, queue: WorkQueue, capabilities: CapabilityCache
    ) -> None:
        self.reconciler = reconciler
        self.queue = queue
        self.capabilities = capabilities
        self._generations: dict[Key, int] = {}
        self._fingerprints: dict[tuple[str, str, str], str] = {}
        self._pod_fingerprints: dict[tuple[str, str, str], Any] = {}
        self.child_debounce = 0.2

    @property
    def clusters(self) -> list[Key]:
        return list(self._generations)

    def on_cluster_event(self, event_type: str | None, obj: dict[str, Any]) -> bool:
        """Returns whether the cluster was queued."""
        meta = obj.get("metadata") or {}
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self._generations.pop(key, None)
            self.queue.forget(key)
            self.reconciler.forget(key)
            metrics.CLUSTERS.set(len(self._generations))
            return False
        generation = int(meta.get("generation", 0))
        observed = (obj.get("status") or {}).get("observedGeneration")
        known = self._generations.get(key)
        self._generations[key] = generation
        metrics.CLUSTERS.set(len(self._generations))
        if event_type in (None, "ADDED") or known != generation or observed != generation:
            self.queue.add(key)
            return True
        return False

    def on_child_event(self, event_type: str | None, obj: dict[str, Any]) -> bool:
        cluster = owner_cluster(obj)
        if cluster is None:
            return False
        meta = obj["metadata"]
        key: Key = (meta.get("namespace", ""), cluster)
        child = (str(obj.get("kind", "")), key[0], str(meta.get("name", "")))
        if event_type == "DELETED":
            self._fingerprints.pop(child, None)
            self.queue.add(key)
            return True
        digest = fingerprint(obj)
        if self._fingerprints.get(child) == digest:
            return False
        first_sight = child not in self._fingerprints
        self._fingerprints[child] = digest
        # A rollout updates a workload's status many times in a row: a short delay lets one
        # reconcile take in the whole burst (the queue keeps the earliest pending add).
        self.queue.add(key, 0 if first_sight else self.child_debounce)
        return True

    def on_engine_pod_event(self, event_type: str | None, obj: dict[str, Any]) -> bool:
        """An engine pod (managed or attached) appeared, went, became Ready or not, or
        moved: the router's engines file and the status follow."""
        key = engine_cluster(obj)
        if key is None:
            return False
        meta = obj.get("metadata") or {}
        pod = ("Pod", key[0], str(meta.get("name", "")))
        if event_type == "DELETED":
            self._pod_fingerprints.pop(pod, None)
            self.queue.add(key)
            return True
        digest = pod_fingerprint(obj)
        if self._pod_fingerprints.get(pod) == digest:
            return False
        self._pod_fingerprints[pod] = digest
        self.queue.add(key, self.child_debounce)
        return True

    def on_crd_event(self, event_type: str | None, obj: dict[str, Any]) -> bool:
        name = (obj.get("metadata") or {}).get("name")
        if name not in ADDON_CRDS:
            return False
        # Added, established or removed: re-discover and let every cluster re-evaluate.
        self.capabilities.invalidate()
        for key in self.clusters:
            self.queue.add(key)
        return True


def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same source as ours (kopf's own login_via_client reads
    only the default kubeconfig location)."""
    cfg = load_configuration(kubeconfig)
    auth = cfg.auth_settings().get("BearerToken", {}).get("value") or ""
    scheme, _, token = str(auth).partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
    )


def build_registry(
    runtime: OperatorRuntime, kubeconfig: str | None = None
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kubeconfig)

    # Handlers are coroutines: kopf runs plain functions in a thread pool, and the queue
    # belongs to the event loop.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def cluster_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        with metrics.track("cluster_event"):
            runtime.on_cluster_event(event.get("type"), event["object"])

    async def child_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        with metrics.track("child_event"):
            runtime.on_child_event(event.get("type"), event["object"])

    for group_or_version, plural in CHILD_SELECTORS:
        kopf.on.event(
            group_or_version,
            plural,
            labels={LABEL_MANAGED_BY: MANAGED_BY_VALUE},
            registry=registry,
            id=f"child-{plural}",
        )(child_event)

    # Engine pods, managed or attached (the attach-mode labels): never written by us.
    @kopf.on.event("v1", "pods", labels={LABEL_ENGINE: kopf.PRESENT}, registry=registry)
    async def engine_pod_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        with metrics.track("engine_pod_event"):
            runtime.on_engine_pod_event(event.get("type"), event["object"])

    @kopf.on.event("apiextensions.k8s.io", "customresourcedefinitions", registry=registry)
    async def crd_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        with metrics.track("crd_event"):
            runtime.on_crd_event(event.get("type"), event["object"])

    return registry


def build_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # We post our own Events (with reasons we choose); kopf's would echo every log line.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    # A non-watch request that hangs (seen once on a fresh API server during discovery)
    # must fail and be retried, not stall kopf for its default 5 minutes.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # kopf keeps one worker per watched object alive this long after its last event, and
    # waits for them on shutdown: 5 s by default would delay every stop (and hand-over).
    settings.queueing.idle_timeout = 0.5
    return settings


def queue_key(key: Hashable) -> Key:
    assert isinstance(key, tuple) and len(key) == 2
    return str(key[0]), str(key[1])
