"""The children of a DualPathCluster: one module per kind, each a pure builder plus the
generic, idempotent `sync` (server-side apply) and `delete` below.

Order matters only a little: identities, config and Services (phase 0) go before workloads
(phase 1) so the first pods do not start before their ServiceAccount and ConfigMap exist.
"""

from __future__ import annotations

from dualpath_operator.children import (
    certmanager,
    configmap,
    daemonset,
    deployment,
    engines,
    engines_config,
    inferencepool,
    nad,
    networkpolicy,
    pdb,
    rbac,
    router,
    service,
    servicemonitor,
)
from dualpath_operator.children.common import ChildKind, ClusterContext
from dualpath_operator.constants import (
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
)
from dualpath_operator.kube import ApiError, KubeClient, Obj

CHILD_KINDS: tuple[ChildKind, ...] = (
    *rbac.KINDS,
    *certmanager.KINDS,
    configmap.KIND,
    engines_config.KIND,
    service.KIND,
    router.SERVICE_KIND,
    inferencepool.SERVICE_KIND,
    networkpolicy.KIND,
    nad.KIND,
    daemonset.KIND,
    engines.KIND,
    deployment.KIND,
    router.DEPLOYMENT_KIND,
    inferencepool.DEPLOYMENT_KIND,
    inferencepool.POOL_KIND,
    pdb.KIND,
    servicemonitor.KIND,
)


def desired(kind: ChildKind, ctx: ClusterContext) -> list[Obj]:
    """The objects of this kind the spec asks for (empty when the cluster lacks the kind)."""
    if kind.resource(ctx.capabilities) is None:
        return []
    return kind.build(ctx)


def owned_by(obj: Obj, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def child_selector(ctx: ClusterContext, component: str | None = None) -> str:
    selector = f"{LABEL_CLUSTER}={ctx.name},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
    return f"{selector},{LABEL_COMPONENT}={component}" if component else selector


async def delete(
    kube: KubeClient, kind: ChildKind, ctx: ClusterContext, keep: set[str] | None = None
) -> list[str]:
    """Delete this cluster's objects of this kind (except names in `keep`); only objects
    it controls (owner uid), each by uid so a same-named newcomer is never hit."""
    rt = kind.resource(ctx.capabilities)
    if rt is None:
        return []
    deleted = []
    try:
        found = await kube.list(rt, ctx.namespace, child_selector(ctx, kind.component))
    except ApiError as exc:
        if exc.status == 404:  # the kind itself went away (its CRD was removed)
            return []
        raise
    for obj in found:
        meta = obj["metadata"]
        if meta["name"] in (keep or set()) or not owned_by(obj, ctx.uid):
            continue
        if await kube.delete(rt, ctx.namespace, meta["name"], uid=meta.get("uid")):
            deleted.append(f"{rt.kind}/{meta['name']}")
    return deleted


__all__ = ["CHILD_KINDS", "ChildKind", "ClusterContext", "delete", "desired", "sync"]
