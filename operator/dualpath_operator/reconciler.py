"""One reconcile of one DualPathCluster: read it, validate it, apply its children, write
its status, post Events. Level-based and idempotent: it looks at the world as it is now,
so it can run any number of times (from watch events, resyncs or retries) with the same
result, and a no-op run writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dualpath_operator import children, metrics
from dualpath_operator.children import engines as engine_children
from dualpath_operator.children.common import (
    ROLES,
    ChildKind,
    ClusterContext,
    agent_daemonset_name,
    controller_name,
)
from dualpath_operator.children.daemonset import DAEMON_SET
from dualpath_operator.children.deployment import DEPLOYMENT
from dualpath_operator.constants import API_VERSION, FIELD_MANAGER, KIND, PLURAL
from dualpath_operator.discovery import Capabilities, capabilities_from_groups
from dualpath_operator.engine_pods import EnginePod, engine_selector, observe_engine_pods
from dualpath_operator.issuance import Issuance
from dualpath_operator.kube import ApiError, KubeClient, Obj, ResourceType
from dualpath_operator.status import (
    ChildChanges,
    EnginesState,
    EventSpec,
    MonitoringState,
    NetworkState,
    Observation,
    Rollout,
    compute_status,
    observe_daemonset,
    observe_deployment,
    status_changed,
    status_to_json,
    sum_rollouts,
    transition_events,
)
from dualpath_operator.validation import name_problems, parse_spec

log = logging.getLogger("dualpath.operator.reconciler")

CLUSTER = ResourceType(API_VERSION, KIND, PLURAL)
EVENT = ResourceType("v1", "Event", "events")
POD = ResourceType("v1", "Pod", "pods")
Key = tuple[str, str]  # (namespace, name)


class ReconcileError(Exception):
    """Some children could not be applied; the status says which. Retried with backoff."""


@dataclass(frozen=True)
class Outcome:
    result: str  # applied | invalid | gone
    requeue_after: float | None = None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SETTLE_RECHECK_S = 1.0
# While cert-manager has not issued every Certificate: look again this soon (Certificates
# and the Secrets cert-manager writes are adopted and read, not watched).
CERT_MANAGER_RECHECK_S = 10.0


class CapabilityCache:
    """Discovery (GET /apis) at most once per `ttl` seconds, or right after invalidate()
    (called when a CRD we care about appears or disappears)."""

    def __init__(self, kube: KubeClient, ttl: float = 30.0, settle_s: float = 5.0) -> None:
        self._kube = kube
        self._ttl = ttl
        self._settle_s = settle_s
        self._value: Capabilities | None = None
        self._at = 0.0
        self._settle_until = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the answer, and keep asking on every get() for `settle_s`: discovery lists
        a new CRD's resources a moment after the CRD's own event (seen: one CRD discovered,
        its sibling installed right after not yet)."""
        self._value = None
        self._settle_until = time.monotonic() + self._settle_s

    def settling(self) -> bool:
        return time.monotonic() < self._settle_until

    async def get(self) -> Capabilities:
        async with self._lock:
            value = self._value
            if value is None or time.monotonic() - self._at > self._ttl or self.settling():
                groups = await self._kube.api_groups()
                resources = {}
                for gv in (
                    "k8s.cni.cncf.io/v1",
                    "monitoring.coreos.com/v1",
                    "cert-manager.io/v1",
                    "inference.networking.k8s.io/v1",
                ):
                    resources[gv] = await self._kube.group_version_resources(gv)
                value = self._value = capabilities_from_groups(groups, resources)
                self._at = time.monotonic()
            return value


def event_body(cr: Obj, spec: EventSpec, identity: str, now: str) -> Obj:
    meta = cr["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": spec.reason,
        "message": spec.message,
        "type": spec.type,
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": identity,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _change_marker(obj: Obj) -> Any:
    """What moves when *our* apply changed the object: the generation (spec changes only;
    status updates leave it alone) and the time on our own managedFields entry (set when
    an apply of ours changes something; other writers, like the token controller adding
    a Secret to a ServiceAccount, leave it alone)."""
    meta = obj.get("metadata", {})
    ours = [
        entry.get("time")
        for entry in meta.get("managedFields") or []
        if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"
    ]
    return (meta.get("generation"), tuple(ours))


def observe_engines(ctx: ClusterContext, stored: dict[str, Obj]) -> EnginesState | None:
    """The engines' part of the status, from the workloads just applied and the pods."""
    if ctx.spec.engines is None:
        return None
    by_role: dict[str, list[Rollout]] = {role: [] for role in ROLES}
    for role, instance in engine_children.instances(ctx):
        name = ctx.engine_daemonset_name(role, instance)
        by_role[role].append(observe_daemonset(stored.get(name)))
    picker = stored.get(ctx.picker_name)
    return EnginesState(
        prefill=sum_rollouts(by_role["prefill"]),
        decode=sum_rollouts(by_role["decode"]),
        pods=ctx.engine_pods,
        router=observe_deployment(stored.get(ctx.router_name)),
        router_endpoint=ctx.router_endpoint,
        inference_pools_served=ctx.capabilities.inference_pools,
        picker=observe_deployment(picker) if picker else Rollout(),
        pool_name=ctx.name,
    )


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        capabilities: CapabilityCache,
        identity: str = FIELD_MANAGER,
        resync_seconds: float = 60.0,
    ) -> None:
        self.kube = kube
        self.capabilities = capabilities
        self.identity = identity
        self.resync_seconds = resync_seconds
        # Per cluster: (kind, child name) -> change marker seen after our last apply.
        self._markers: dict[Key, dict[tuple[str, str], Any]] = {}
        self._applied_generation: dict[Key, int] = {}
        self.issuance = Issuance(kube)

    def forget(self, key: Key) -> None:
        self._applied_generation.pop(key, None)
        self._markers.pop(key, None)

    async def reconcile(self, key: Key) -> Outcome:
        ns, name = key
        cr = await self.kube.get(CLUSTER, ns, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            # Children carry owner references: the garbage collector removes them.
            self.forget(key)
            metrics.RECONCILES.labels("gone").inc()
            return Outcome("gone")
        generation = int(cr["metadata"].get("generation", 1))
        spec, spec_problems = parse_spec(cr.get("spec") or {})
        problems = [str(p) for p in (*name_problems(name), *spec_problems)]
        if problems or spec is None:
            obs = await self._observe_existing(cr, generation, tuple(problems))
            await self._write_status(cr, obs, ChildChanges())
            metrics.RECONCILES.labels("invalid").inc()
            return Outcome("invalid", self.resync_seconds)
        caps = await self.capabilities.get()
        engine_pods = await self._engine_pods(ns, name, spec.engines.port) if spec.engines else ()
        ctx = ClusterContext(
            name, ns, cr["metadata"]["uid"], generation, spec, caps, engine_pods=engine_pods
        )
        # Identities before workloads: a pod's Secret volume must exist for it to start.
        certificates, cert_writes = await self.issuance.sync(ctx)
        changes, errors, stored = await self._apply_children(ctx)
        changes.created[:0] = cert_writes.created
        changes.updated[:0] = cert_writes.updated
        changes.deleted += cert_writes.deleted
        for action, labels in (
            ("created", cert_writes.created),
            ("updated", cert_writes.updated),
            ("deleted", cert_writes.deleted),
        ):
            for _ in labels:
                metrics.CHILD_WRITES.labels("Secret", action).inc()
        obs = Observation(
            generation=generation,
            prefill=observe_daemonset(stored.get(agent_daemonset_name(name, "prefill"))),
            decode=observe_daemonset(stored.get(agent_daemonset_name(name, "decode"))),
            controller=observe_deployment(stored.get(controller_name(name))),
            network=NetworkState(
                attachments_requested=len(spec.network.attachments),
                nad_supported=caps.network_attachments,
                applied=tuple(ctx.attachment_name(a.name) for a in spec.network.attachments)
                if caps.network_attachments
                else (),
            ),
            monitoring=MonitoringState(
                metrics=spec.monitoring.metrics,
                service_monitor_requested=spec.monitoring.service_monitor,
                service_monitor_supported=caps.service_monitors,
            ),
            apply_errors=tuple(errors),
            config_hash=ctx.config_hash,
            pdb_api_version=caps.pdb_api_version,
            controller_endpoint=ctx.controller_address,
            certificates=certificates,
            engines=observe_engines(ctx, stored),
        )
        drift = self._applied_generation.get(key) == generation
        await self._write_status(cr, obs, changes, drift=drift)
        if certificates.error:
            errors.append(f"certificates: {certificates.error}")
        if errors:
            metrics.RECONCILES.labels("error").inc()
            raise ReconcileError("; ".join(errors))
        self._applied_generation[key] = generation
        metrics.RECONCILES.labels("applied").inc()
        # Right after an add-on CRD changed, look again soon: discovery may still lag.
        again = SETTLE_RECHECK_S if self.capabilities.settling() else self.resync_seconds
        if certificates.not_ready:
            again = min(again, CERT_MANAGER_RECHECK_S)
        return Outcome("applied", again)

    async def _engine_pods(self, ns: str, name: str, default_port: int) -> tuple[EnginePod, ...]:
        pods = await self.kube.list(POD, ns, engine_selector(name))
        return observe_engine_pods(pods, default_port)

    # --- children ----------------------------------------------------------------------
    async def _apply_one(self, key: Key, rt: ResourceType, obj: Obj) -> tuple[str, Obj]:
        try:
            code, stored = await self.kube.apply_with_status(rt, obj)
        except ApiError as exc:
            if exc.status != 422:
                raise
            code, stored = 200, await self._replace_rejected(rt, obj, exc)
        markers = self._markers.setdefault(key, {})
        mkey = (rt.kind, stored["metadata"]["name"])
        marker = _change_marker(stored)
        previous = markers.get(mkey)
        markers[mkey] = marker
        if code == 201:
            return "created", stored
        if previous is not None and previous != marker:
            return "updated", stored
        return "unchanged", stored

    async def _replace_rejected(self, rt: ResourceType, obj: Obj, exc: ApiError) -> Obj:
        """Server-side apply merges list entries by key, so an edit that changed a key
        (a Service port number, say) leaves the other writer's entry next to ours and the
        merged object can be invalid (two ports named grpc). Then take the object back
        with a plain update of our top-level fields (lists replaced whole), keeping
        everything else the server or others set (clusterIP, other annotations)."""
        meta = obj["metadata"]
        current = await self.kube.get(rt, meta["namespace"], meta["name"])
        if current is None:
            raise exc
        merged = dict(current)
        for field, value in obj.items():
            if field == "metadata":
                merged["metadata"] = {
                    **current["metadata"],
                    "labels": {**(current["metadata"].get("labels") or {}), **meta["labels"]},
                    "ownerReferences": meta["ownerReferences"],
                }
            elif isinstance(value, dict) and isinstance(current.get(field), dict):
                merged[field] = {**current[field], **value}
            else:
                merged[field] = value
        log.warning(
            "apply rejected; replaced our fields instead",
            extra={"child": f"{rt.kind}/{meta['name']}", "error": exc.message[:300]},
        )
        return await self.kube.replace(rt, merged)

    async def _apply_children(
        self, ctx: ClusterContext
    ) -> tuple[ChildChanges, list[str], dict[str, Obj]]:
        key = (ctx.namespace, ctx.name)
        changes = ChildChanges()
        errors: list[str] = []
        stored: dict[str, Obj] = {}
        for phase in sorted({k.phase for k in children.CHILD_KINDS}):
            jobs: list[tuple[ChildKind, ResourceType, Obj]] = []
            for kind in children.CHILD_KINDS:
                rt = kind.resource(ctx.capabilities)
                if kind.phase == phase and rt is not None:
                    jobs += [(kind, rt, obj) for obj in kind.build(ctx)]
            results = await asyncio.gather(
                *(self._apply_one(key, rt, obj) for _, rt, obj in jobs), return_exceptions=True
            )
            for (_, rt, obj), result in zip(jobs, results, strict=True):
                label = f"{rt.kind}/{obj['metadata']['name']}"
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    errors.append(f"{label}: {result}")
                    log.warning("apply failed", extra={"child": label, "error": str(result)})
                    continue
                action, obj_stored = result
                if rt.kind in (DAEMON_SET.kind, DEPLOYMENT.kind):
                    stored[obj["metadata"]["name"]] = obj_stored
                if action != "unchanged":
                    getattr(changes, action).append(label)
                    metrics.CHILD_WRITES.labels(rt.kind, action).inc()
        for kind in children.CHILD_KINDS:
            if not kind.prune:
                continue
            keep = {o["metadata"]["name"] for o in children.desired(kind, ctx)}
            try:
                deleted = await children.delete(self.kube, kind, ctx, keep)
            except ApiError as exc:
                errors.append(f"pruning {kind.name}: {exc}")
                continue
            changes.deleted += deleted
            for label in deleted:
                metrics.CHILD_WRITES.labels(label.split("/")[0], "deleted").inc()
        return changes, errors, stored

    async def _observe_existing(
        self, cr: Obj, generation: int, problems: tuple[str, ...]
    ) -> Observation:
        """Children as they are (an invalid spec is not applied, but its status still
        reflects the running children)."""
        ns, name, uid = cr["metadata"]["namespace"], cr["metadata"]["name"], cr["metadata"]["uid"]

        async def owned(rt: ResourceType, child: str) -> Obj | None:
            obj = await self.kube.get(rt, ns, child)
            return obj if obj is not None and children.owned_by(obj, uid) else None

        ds = {role: await owned(DAEMON_SET, agent_daemonset_name(name, role)) for role in ROLES}
        dep = await owned(DEPLOYMENT, controller_name(name))
        return Observation(
            generation=generation,
            prefill=observe_daemonset(ds["prefill"]),
            decode=observe_daemonset(ds["decode"]),
            controller=observe_deployment(dep) if dep else Rollout(),
            network=None,
            problems=problems,
        )

    # --- status and events ---------------------------------------------------------------
    async def _write_status(
        self, cr: Obj, obs: Observation, changes: ChildChanges, drift: bool = False
    ) -> None:
        ns, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        now = utc_now()
        previous = cr.get("status")
        new = compute_status(previous, obs, now)
        events = transition_events(previous, new)
        if changes.any():
            reason = "DriftCorrected" if drift else "ChildrenApplied"
            events.insert(0, EventSpec("Normal", reason, changes.message()))
        if status_changed(previous, new):
            try:
                await self.kube.merge_patch(
                    CLUSTER, ns, name, {"status": status_to_json(new)}, subresource="status"
                )
                metrics.STATUS_WRITES.inc()
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
        await asyncio.gather(*(self._post_event(cr, event, now) for event in events))

    async def _post_event(self, cr: Obj, event: EventSpec, now: str) -> None:
        try:
            await self.kube.create(
                EVENT, cr["metadata"]["namespace"], event_body(cr, event, self.identity, now)
            )
            metrics.EVENTS_POSTED.labels(event.type).inc()
        except ApiError as exc:
            # Events are best effort: never fail a reconcile because one was not recorded.
            log.warning("event not posted", extra={"reason": event.reason, "error": str(exc)})
        log.info(
            "event",
            extra={
                "cluster": f"{cr['metadata']['namespace']}/{cr['metadata']['name']}",
                "type": event.type,
                "reason": event.reason,
                "event_message": event.message,
            },
        )
