"""Leader election on a coordination.k8s.io/v1 Lease, so that of several operator replicas
exactly one acts (the others wait as hot standbys).

The algorithm is client-go's: a candidate takes the Lease when it is free or when its
record has not changed for leaseDurationSeconds *as observed locally* (no clock comparison
across machines); the leader renews every `retry_period` and gives up (the process exits,
its Deployment restarts it) when it could not renew for `renew_deadline`, which is shorter
than the lease duration, so a standby can only take over after the old leader stopped
acting. A leader that shuts down cleanly releases the Lease for an immediate hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from dualpath_operator import metrics
from dualpath_operator.kube import ApiError, KubeClient, Obj, ResourceType

log = logging.getLogger("dualpath.operator.leader")
LEASE = ResourceType("coordination.k8s.io/v1", "Lease", "leases")


class LeadershipLost(Exception):
    pass


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.is_leader = False
        self.holder = ""
        self._observed_rv = ""
        self._observed_at = 0.0
        self._last_renew = 0.0

    def _spec(self, old: Obj, now: str) -> Obj:
        mine = old.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": old.get("acquireTime", now) if mine else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions", 0)) + (0 if mine else 1),
        }

    async def try_acquire_or_renew(self) -> bool:
        now = micro_time()
        lease = await self.kube.get(LEASE, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, now),
            }
            try:
                await self.kube.create(LEASE, self.namespace, body)
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
            return self._became_leader()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        rv = lease["metadata"]["resourceVersion"]
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        held_by_other = holder and holder != self.identity
        if held_by_other and time.monotonic() - self._observed_at < duration:
            self.holder = holder
            return False
        lease["spec"] = self._spec(spec, now)
        try:
            await self.kube.replace(LEASE, lease)
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        if held_by_other:
            log.info("took over an expired lease", extra={"previous_holder": holder})
        return self._became_leader()

    def _became_leader(self) -> bool:
        self._last_renew = time.monotonic()
        if not self.is_leader:
            log.info("leader lease acquired", extra={"lease": self.name, "identity": self.identity})
        self.is_leader = True
        self.holder = self.identity
        metrics.LEADER.set(1)
        return True

    async def acquire(self) -> None:
        """Wait until this replica is the leader."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except (ApiError, OSError) as exc:
                log.warning("lease check failed", extra={"error": str(exc)})
            await asyncio.sleep(self.retry_period)

    async def keep(self) -> None:
        """Renew until cancelled; raise LeadershipLost when renewing fails for too long."""
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                renewed = await asyncio.wait_for(
                    self.try_acquire_or_renew(), timeout=self.renew_deadline
                )
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("lease renewal failed", extra={"error": str(exc)})
                renewed = False
            if not renewed and time.monotonic() - self._last_renew > self.renew_deadline:
                self.is_leader = False
                metrics.LEADER.set(0)
                raise LeadershipLost(
                    f"could not renew lease {self.name} for {self.renew_deadline}s"
                )

    async def release(self) -> None:
        """Hand the Lease over now (called on clean shutdown while leader)."""
        if not self.is_leader:
            return
        try:
            lease = await self.kube.get(LEASE, self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(LEASE, lease)
        except (ApiError, OSError) as exc:
            log.warning("lease release failed", extra={"error": str(exc)})
        self.is_leader = False
        metrics.LEADER.set(0)
