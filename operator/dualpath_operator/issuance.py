"""The certificate step of a reconcile: the only I/O of mutual TLS.

Operator mode: read the CA Secret and each role Secret, let `renewal.py` decide, and write
only what must change (a new CA with create, CA rotation steps with an optimistic-locked
replace, role Secrets with server-side apply). cert-manager mode: the Issuers and
Certificates are ordinary children (`children/certmanager.py`); here the Secrets
cert-manager wrote are adopted (owner reference, so they go with the cluster) and the
Certificates' readiness is read. Either way the Secrets left over from the other mode
are deleted.

Secret changes never roll pods: the kubelet swaps the mounted files and every component
re-reads its certificate, key and trust bundle when they change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dualpath_common import pki

from dualpath_operator import metrics
from dualpath_operator.children.certmanager import (
    CERTIFICATE,
    ca_certificate_name,
    certificate_ready,
)
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.children.tls_secrets import SECRET, ca_secret, leaf_secret
from dualpath_operator.constants import LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY_VALUE
from dualpath_operator.kube import ApiError, KubeClient, Obj
from dualpath_operator.mtls import (
    CA_VALID_DAYS,
    LeafSpec,
    ca_secret_name,
    cert_manager_ca_secret_name,
    leaf_specs,
    resolve_mode,
)
from dualpath_operator.renewal import (
    PUBLISHED_AT_ANNOTATION,
    CaState,
    apply_ca_plan,
    ca_state,
    format_time,
    plan_ca,
    plan_leaf,
    renew_at,
    secret_bytes,
    trust_bundle,
)
from dualpath_operator.status import CertificatesState

log = logging.getLogger("dualpath.operator.issuance")

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IssuanceError(Exception):
    """A Secret could not be read or written, or belongs to someone else."""


@dataclass
class Writes:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _controlled_by_other(obj: Obj, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") != uid for ref in refs)


class Issuance:
    def __init__(self, kube: KubeClient, clock: Clock = utc_now) -> None:
        self.kube = kube
        self.clock = clock

    async def sync(self, ctx: ClusterContext) -> tuple[CertificatesState, Writes]:
        mtls = ctx.spec.security.mtls
        mode = resolve_mode(mtls.issuer, ctx.capabilities)
        state = CertificatesState(
            requested=mtls.issuer, mode=mode, cert_manager_served=ctx.capabilities.cert_manager
        )
        superseded = ctx.spec.traffic_controller.tls_secret_name or ""
        writes = Writes()
        try:
            if mode == "operator":
                state = await self._operator_issued(ctx, state, writes)
                await self._delete_owned(ctx, cert_manager_ca_secret_name(ctx.name), writes)
            else:
                if ctx.capabilities.cert_manager:
                    state = await self._cert_manager_issued(ctx, state)
                await self._delete_owned(ctx, ca_secret_name(ctx.name), writes)
        except (ApiError, IssuanceError, pki.PkiError) as exc:
            log.warning(
                "certificates not synced",
                extra={"cluster": f"{ctx.namespace}/{ctx.name}", "error": str(exc)},
            )
            state = dataclasses.replace(state, error=str(exc)[:500])
        return dataclasses.replace(state, superseded_tls_secret=superseded), writes

    # --- operator-issued ------------------------------------------------------------------
    async def _operator_issued(
        self, ctx: ClusterContext, state: CertificatesState, writes: Writes
    ) -> CertificatesState:
        now = self.clock()
        ca = await self._sync_ca(ctx, now, writes)
        assert ca.active is not None
        bundle = trust_bundle(ca, now)
        mtls = ctx.spec.security.mtls
        renewals: list[dt.datetime] = []
        for leaf in leaf_specs(ctx.name, ctx.namespace):
            current = await self.kube.get(SECRET, ctx.namespace, leaf.secret_name)
            if current is not None and _controlled_by_other(current, ctx.uid):
                raise IssuanceError(
                    f"Secret {leaf.secret_name} is controlled by another object; not replacing it"
                )
            data = secret_bytes(current)
            plan = plan_leaf(
                data, leaf, ca.active.cert_pem, bundle, mtls.renew_before_fraction, now
            )
            if plan.action == "issue":
                cert, key = self._issue(ctx, ca, leaf)
                metrics.CERTIFICATES_ISSUED.labels(leaf.role, plan.cause).inc()
            elif plan.action == "rebundle":
                cert, key = data["tls.crt"], data["tls.key"]
            else:
                when = renew_at(data["tls.crt"], mtls.renew_before_fraction)
                if when is not None:
                    renewals.append(when)
                continue
            await self.kube.apply(SECRET, leaf_secret(ctx, leaf, cert, key, bundle))
            label = f"Secret/{leaf.secret_name}"
            (writes.created if current is None else writes.updated).append(label)
            when = renew_at(cert, mtls.renew_before_fraction)
            if when is not None:
                renewals.append(when)
            log.info(
                "role certificate written",
                extra={
                    "cluster": f"{ctx.namespace}/{ctx.name}",
                    "secret": leaf.secret_name,
                    "action": plan.action,
                    "reason": plan.reason,
                },
            )
        return dataclasses.replace(
            state,
            ca_not_after=pki.not_after(ca.active.cert_pem),
            next_renewal=min(renewals) if renewals else None,
        )

    def _issue(self, ctx: ClusterContext, ca: CaState, leaf: LeafSpec) -> tuple[bytes, bytes]:
        assert ca.active is not None
        return pki.issue(
            ca.active,
            leaf.role,
            ctx.namespace,
            ctx.name,
            dns_names=leaf.extra_dns_names,
            valid_days=ctx.spec.security.mtls.certificate_days,
        )

    async def _sync_ca(self, ctx: ClusterContext, now: dt.datetime, writes: Writes) -> CaState:
        name = ca_secret_name(ctx.name)
        current = await self.kube.get(SECRET, ctx.namespace, name)
        if current is not None and not _owned_by(current, ctx.uid):
            # Never take over (or overwrite) a CA someone else put there.
            raise IssuanceError(f"Secret {name} exists and is not owned by this DualPathCluster")
        annotations = (current or {}).get("metadata", {}).get("annotations") or {}
        state = ca_state(secret_bytes(current), annotations)
        plan = plan_ca(state, now)
        if plan.action == "keep":
            return state

        def new_ca() -> pki.CertificateAuthority:
            return pki.new_ca(f"dualpath-ca.{ctx.name}.{ctx.namespace}", CA_VALID_DAYS)

        new = apply_ca_plan(state, plan, new_ca, now)
        kept = {k: v for k, v in annotations.items() if k != PUBLISHED_AT_ANNOTATION}
        if new.next is not None and new.next_published_at is not None:
            kept[PUBLISHED_AT_ANNOTATION] = format_time(new.next_published_at)
        body = ca_secret(ctx, new.to_data(), kept)
        if current is None:
            # create, not apply: a stale read must never replace a CA that exists.
            await self.kube.create(SECRET, ctx.namespace, body)
            writes.created.append(f"Secret/{name}")
        else:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await self.kube.replace(SECRET, body)  # 409 when someone wrote in between
            writes.updated.append(f"Secret/{name}")
        metrics.CA_ROTATIONS.labels(plan.action).inc()
        log.info(
            "cluster CA changed",
            extra={
                "cluster": f"{ctx.namespace}/{ctx.name}",
                "action": plan.action,
                "reason": plan.reason,
            },
        )
        return new

    # --- cert-manager ------------------------------------------------------------------------
    async def _cert_manager_issued(
        self, ctx: ClusterContext, state: CertificatesState
    ) -> CertificatesState:
        selector = f"{LABEL_CLUSTER}={ctx.name},{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"
        found = {
            c["metadata"]["name"]: c
            for c in await self.kube.list(CERTIFICATE, ctx.namespace, selector)
            if _owned_by(c, ctx.uid)
        }
        wanted = [
            ca_certificate_name(ctx.name),
            *(leaf.secret_name for leaf in leaf_specs(ctx.name, ctx.namespace)),
        ]
        pending = tuple(name for name in wanted if not certificate_ready(found.get(name)))
        secrets = [cert_manager_ca_secret_name(ctx.name)]
        secrets += [leaf.secret_name for leaf in leaf_specs(ctx.name, ctx.namespace)]
        for name in secrets:
            await self._adopt(ctx, name)
        return dataclasses.replace(state, not_ready=pending)

    async def _adopt(self, ctx: ClusterContext, name: str) -> None:
        """Give a Secret cert-manager wrote our owner reference: cert-manager does not (by
        default), and the cluster's Secrets must go when the cluster goes."""
        secret = await self.kube.get(SECRET, ctx.namespace, name)
        if secret is None or _owned_by(secret, ctx.uid) or _controlled_by_other(secret, ctx.uid):
            return
        refs = [*(secret["metadata"].get("ownerReferences") or []), ctx.owner_reference()]
        patch = {
            "metadata": {
                "ownerReferences": refs,
                "resourceVersion": secret["metadata"]["resourceVersion"],
            }
        }
        await self.kube.merge_patch(SECRET, ctx.namespace, name, patch)

    async def _delete_owned(self, ctx: ClusterContext, name: str, writes: Writes) -> None:
        """The other mode's CA Secret, when this cluster owns it."""
        secret = await self.kube.get(SECRET, ctx.namespace, name)
        if secret is None or not _owned_by(secret, ctx.uid):
            return
        uid = secret["metadata"].get("uid")
        if await self.kube.delete(SECRET, ctx.namespace, name, uid=uid):
            writes.deleted.append(f"Secret/{name}")
