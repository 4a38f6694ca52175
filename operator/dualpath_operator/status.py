"""DualPathCluster status, computed from what the children report (pure functions).

Inputs: the DaemonSets' and the Deployment's own status as the API server returns them,
the spec's problems, the network capability; output: the status object and the Events to
post for condition transitions. A condition keeps its lastTransitionTime while its status
stays the same, so status writes happen only when something really changed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from dualpath_operator.api import (
    CONDITION_TYPES,
    AgentsStatus,
    Condition,
    ControllerStatus,
    DualPathClusterStatus,
    EnginesStatus,
    RoleAgentsStatus,
    RoleEnginesStatus,
)
from dualpath_operator.engine_pods import EnginePod

Obj = dict[str, Any]
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Rollout:
    """One workload's observed state."""

    desired: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    # The workload controller has seen the latest spec and every pod runs it.
    complete: bool = False
    exists: bool = False


def observe_daemonset(obj: Obj | None) -> Rollout:
    if not obj:
        return Rollout()
    gen = obj.get("metadata", {}).get("generation", 0)
    st = obj.get("status") or {}
    desired = int(st.get("desiredNumberScheduled", 0))
    updated = int(st.get("updatedNumberScheduled", 0))
    available = int(st.get("numberAvailable", 0))
    return Rollout(
        desired=desired,
        ready=int(st.get("numberReady", 0)),
        updated=updated,
        available=available,
        complete=st.get("observedGeneration", 0) >= gen
        and updated == desired
        and available == desired,
        exists=True,
    )


def observe_deployment(obj: Obj | None) -> Rollout:
    if not obj:
        return Rollout()
    gen = obj.get("metadata", {}).get("generation", 0)
    desired = int((obj.get("spec") or {}).get("replicas", 1))
    st = obj.get("status") or {}
    updated = int(st.get("updatedReplicas", 0))
    available = int(st.get("availableReplicas", 0))
    total = int(st.get("replicas", 0))
    return Rollout(
        desired=desired,
        ready=int(st.get("readyReplicas", 0)),
        updated=updated,
        available=available,
        complete=st.get("observedGeneration", 0) >= gen
        and updated == desired
        and available == desired
        and total == desired,
        exists=True,
    )


@dataclass(frozen=True)
class NetworkState:
    attachments_requested: int
    nad_supported: bool
    applied: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitoringState:
    metrics: bool
    service_monitor_requested: bool
    service_monitor_supported: bool


@dataclass(frozen=True)
class CertificatesState:
    """What the certificate step of a reconcile found and did (`issuance.py`)."""

    requested: str  # spec.security.mtls.issuer: auto | operator | cert-manager
    mode: str  # what it resolved to: operator | cert-manager
    cert_manager_served: bool
    ca_not_after: dt.datetime | None = None  # operator mode
    next_renewal: dt.datetime | None = None  # operator mode: earliest role renewal
    not_ready: tuple[str, ...] = ()  # cert-manager mode: Certificates not Ready yet
    error: str = ""
    # spec.trafficController.tlsSecretName, set but replaced by mutual TLS.
    superseded_tls_secret: str = ""


@dataclass(frozen=True)
class EnginesState:
    """The engines side of a reconcile: the managed engines' DaemonSets (summed per role),
    every engine pod (managed and attached), the router and the endpoint picker."""

    prefill: Rollout = Rollout()
    decode: Rollout = Rollout()
    pods: tuple[EnginePod, ...] = ()
    router: Rollout = Rollout()
    router_endpoint: str = ""
    inference_pools_served: bool = False
    picker: Rollout = Rollout()
    pool_name: str = ""


def sum_rollouts(rollouts: list[Rollout]) -> Rollout:
    if not rollouts:
        return Rollout(complete=True)
    return Rollout(
        desired=sum(r.desired for r in rollouts),
        ready=sum(r.ready for r in rollouts),
        updated=sum(r.updated for r in rollouts),
        available=sum(r.available for r in rollouts),
        complete=all(r.complete for r in rollouts),
        exists=any(r.exists for r in rollouts),
    )


@dataclass(frozen=True)
class Observation:
    """Everything status depends on, gathered by one reconcile."""

    generation: int
    prefill: Rollout
    decode: Rollout
    controller: Rollout
    network: NetworkState | None  # None: unknown (invalid spec)
    monitoring: MonitoringState | None = None  # None: unknown (invalid spec)
    problems: tuple[str, ...] = ()
    apply_errors: tuple[str, ...] = ()
    config_hash: str = ""
    pdb_api_version: str = ""
    controller_endpoint: str = ""
    certificates: CertificatesState | None = None  # None: unknown (invalid spec)
    # None: spec.engines is not set (or the spec is invalid).
    engines: EnginesState | None = None


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


def _cond(type_: str, status: bool | None, reason: str, message: str) -> Condition:
    text: Literal["True", "False", "Unknown"] = (
        "Unknown" if status is None else ("True" if status else "False")
    )
    return Condition(type=type_, status=text, reason=reason, message=message[:MAX_MESSAGE])


def role_status(rollout: Rollout) -> RoleAgentsStatus:
    return RoleAgentsStatus(
        desired=rollout.desired,
        ready=rollout.ready,
        updated=rollout.updated,
        available=rollout.available,
        summary=f"{rollout.ready}/{rollout.desired}",
    )


def network_condition(obs: Observation, previous: dict[str, Condition]) -> Condition:
    net = obs.network
    if net is None:
        return previous.get("NetworkReady") or _cond(
            "NetworkReady", None, "InvalidSpec", "the spec is invalid; network not evaluated"
        )
    if net.attachments_requested == 0:
        return _cond(
            "NetworkReady",
            True,
            "NoAttachments",
            "no secondary networks requested; KV traffic uses the pod network",
        )
    if not net.nad_supported:
        return _cond(
            "NetworkReady",
            False,
            "NetworkAttachmentDefinitionCRDMissing",
            f"spec.network.attachments asks for {net.attachments_requested} attachment(s), but "
            "the cluster does not serve k8s.cni.cncf.io/v1 NetworkAttachmentDefinition: "
            "install Multus (its CRD), or remove the attachments",
        )
    return _cond(
        "NetworkReady",
        True,
        "AttachmentsApplied",
        "NetworkAttachmentDefinitions applied: " + ", ".join(net.applied),
    )


def monitoring_condition(obs: Observation, previous: dict[str, Condition]) -> Condition:
    """Whether what monitoring asks for exists. Never affects Ready: the data path runs
    without a ServiceMonitor, but whoever asked for one should see why there is none."""
    mon = obs.monitoring
    if mon is None:
        return previous.get("MonitoringReady") or _cond(
            "MonitoringReady", None, "InvalidSpec", "the spec is invalid; monitoring not evaluated"
        )
    if not mon.metrics:
        return _cond("MonitoringReady", True, "MetricsDisabled", "spec.monitoring.metrics is false")
    if not mon.service_monitor_requested:
        return _cond(
            "MonitoringReady",
            True,
            "ServiceMonitorNotRequested",
            "metrics served on every component's /metrics port; no ServiceMonitor asked for",
        )
    if not mon.service_monitor_supported:
        return _cond(
            "MonitoringReady",
            False,
            "ServiceMonitorCRDMissing",
            "spec.monitoring.serviceMonitor is true, but the cluster does not serve "
            "monitoring.coreos.com/v1 ServiceMonitor: install the Prometheus Operator (its "
            "CRDs), or set spec.monitoring.serviceMonitor to false",
        )
    return _cond("MonitoringReady", True, "ServiceMonitorApplied", "ServiceMonitor applied")


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificates_condition(obs: Observation, previous: dict[str, Condition]) -> Condition:
    """Who issues the mTLS certificates and whether every role has one. The reason names
    the mode; an issuer that cannot work is reported, never silently replaced."""
    certs = obs.certificates
    if certs is None:
        return previous.get("CertificatesReady") or _cond(
            "CertificatesReady", None, "NotEvaluated", "certificates not evaluated (invalid spec)"
        )
    if certs.error:
        return _cond("CertificatesReady", False, "IssueFailed", certs.error)
    if certs.mode == "cert-manager":
        if not certs.cert_manager_served:
            return _cond(
                "CertificatesReady",
                False,
                "CertManagerCRDMissing",
                "spec.security.mtls.issuer is cert-manager, but the cluster does not serve "
                "cert-manager.io/v1 Certificate and Issuer: install cert-manager, or set the "
                "issuer to operator or auto",
            )
        if certs.not_ready:
            return _cond(
                "CertificatesReady",
                False,
                "CertManagerIssuing",
                "waiting for cert-manager to issue Certificate(s): " + ", ".join(certs.not_ready),
            )
        return _cond(
            "CertificatesReady",
            True,
            "CertManagerIssued",
            f"cert-manager issued every role certificate (issuer: {certs.requested})"
            + _superseded(certs),
        )
    parts = ["the operator's cluster CA issued every role certificate"]
    if certs.requested == "auto":
        parts.append("(auto: cert-manager's CRDs are not served)")
    if certs.ca_not_after is not None:
        parts.append(f"; CA valid until {_when(certs.ca_not_after)}")
    if certs.next_renewal is not None:
        parts.append(f"; next renewal at {_when(certs.next_renewal)}")
    message = " ".join(parts).replace(" ;", ";") + _superseded(certs)
    return _cond("CertificatesReady", True, "OperatorIssued", message)


def _superseded(certs: CertificatesState) -> str:
    if not certs.superseded_tls_secret:
        return ""
    return (
        f"; spec.trafficController.tlsSecretName ({certs.superseded_tls_secret}) is not used:"
        " mutual TLS replaces the controller's server-only TLS"
    )


def role_engines_status(engines: EnginesState, role: str) -> RoleEnginesStatus:
    managed = engines.prefill if role == "prefill" else engines.decode
    pods = [p for p in engines.pods if p.role == role]
    attached = sum(1 for p in pods if not p.managed)
    desired = managed.desired + attached
    ready = sum(1 for p in pods if p.ready)
    return RoleEnginesStatus(
        desired=desired, ready=ready, attached=attached, summary=f"{ready}/{desired}"
    )


def engines_condition(obs: Observation) -> Condition:
    engines = obs.engines
    if engines is None:
        return _cond(
            "EnginesReady",
            True,
            "NotRequested",
            "spec.engines is not set: no engines or router are managed",
        )
    roles = {role: role_engines_status(engines, role) for role in ("prefill", "decode")}
    summary = ", ".join(f"{r} engines {s.ready}/{s.desired} ready" for r, s in roles.items())
    for role, st in roles.items():
        if st.desired == 0:
            return _cond(
                "EnginesReady",
                False,
                f"No{role.capitalize()}Engines",
                f"no {role} engine: set spec.engines.{role}.instancesPerNode > 0 on nodes of "
                f"spec.nodes.{role}, or label your own engine pods dualpath.io/cluster=<this "
                f"cluster> and dualpath.io/engine={role}",
            )
    misconfigured = [f"pod {p.name}: {p.problem}" for p in engines.pods if p.problem]
    if misconfigured:
        return _cond(
            "EnginesReady",
            False,
            "EnginePodMisconfigured",
            f"{summary}; not served: " + "; ".join(misconfigured),
        )
    if any(st.ready < st.desired for st in roles.values()):
        return _cond("EnginesReady", False, "EnginesNotReady", summary)
    r = engines.router
    if r.ready < r.desired or r.desired == 0:
        return _cond(
            "EnginesReady",
            False,
            "RouterNotReady",
            f"{summary}; router {r.ready}/{r.desired} replicas ready",
        )
    return _cond(
        "EnginesReady",
        True,
        "EnginesReady",
        f"{summary}; router {r.ready}/{r.desired} ready at {engines.router_endpoint}",
    )


def inference_pool_condition(obs: Observation) -> Condition:
    """Whether the Gateway API Inference Extension is wired. Never affects Ready: the
    router serves without it; a skipped pool is said, never silent."""
    engines = obs.engines
    if engines is None:
        return _cond("InferencePoolReady", True, "NotRequested", "spec.engines is not set: no pool")
    if not engines.inference_pools_served:
        return _cond(
            "InferencePoolReady",
            False,
            "InferencePoolCRDMissing",
            "skipped: the cluster does not serve inference.networking.k8s.io/v1 InferencePool "
            "(install the Gateway API Inference Extension's CRDs); no InferencePool or "
            f"endpoint picker created. Clients use the router at {engines.router_endpoint}",
        )
    p = engines.picker
    if p.ready < p.desired or p.desired == 0:
        return _cond(
            "InferencePoolReady",
            False,
            "PickerNotReady",
            f"InferencePool {engines.pool_name} applied; endpoint picker {p.ready}/{p.desired} "
            "replicas ready",
        )
    return _cond(
        "InferencePoolReady",
        True,
        "InferencePoolApplied",
        f"InferencePool {engines.pool_name} of the prefill engines, endpoint picker "
        f"{p.ready}/{p.desired} ready",
    )


def _agents_summary(obs: Observation) -> str:
    p, d = obs.prefill, obs.decode
    return f"prefill agents {p.ready}/{p.desired} ready, decode agents {d.ready}/{d.desired} ready"


def ready_condition(
    obs: Observation,
    network: Condition,
    certificates: Condition | None = None,
    engines: Condition | None = None,
) -> Condition:
    p, d, c = obs.prefill, obs.decode, obs.controller
    if obs.problems and not (p.exists or d.exists or c.exists):
        return _cond("Ready", False, "InvalidSpec", "the spec is invalid; nothing was created")
    if network.status == "False":
        return _cond("Ready", False, "NetworkNotReady", network.message)
    if certificates is not None and certificates.status == "False":
        # Pods cannot start without their identity (the Secret volume is missing).
        return _cond("Ready", False, "CertificatesNotReady", certificates.message)
    if p.desired == 0:
        return _cond("Ready", False, "NoPrefillNodes", "no node matches spec.nodes.prefill")
    if d.desired == 0:
        return _cond("Ready", False, "NoDecodeNodes", "no node matches spec.nodes.decode")
    if p.ready < p.desired or d.ready < d.desired:
        return _cond("Ready", False, "AgentsNotReady", _agents_summary(obs))
    if c.ready < c.desired or c.desired == 0:
        return _cond(
            "Ready",
            False,
            "ControllerNotReady",
            f"traffic controller {c.ready}/{c.desired} replicas ready",
        )
    if engines is not None and engines.status == "False":
        return _cond("Ready", False, engines.reason, engines.message)
    return _cond(
        "Ready",
        True,
        "AllComponentsReady",
        f"{_agents_summary(obs)}, traffic controller {c.ready}/{c.desired} ready",
    )


def progressing_condition(obs: Observation) -> Condition:
    if obs.problems:
        return _cond(
            "Progressing",
            False,
            "InvalidSpec",
            "not rolling out an invalid spec; children keep their last valid configuration",
        )
    workloads = [
        ("prefill agents", obs.prefill),
        ("decode agents", obs.decode),
        ("traffic controller", obs.controller),
    ]
    if obs.engines is not None:
        workloads += [
            ("prefill engines", obs.engines.prefill),
            ("decode engines", obs.engines.decode),
            ("router", obs.engines.router),
        ]
    pending = [
        f"{name}: {r.updated}/{r.desired} updated, {r.available}/{r.desired} available"
        for name, r in workloads
        if not r.complete
    ]
    if pending:
        return _cond("Progressing", True, "RollingOut", "; ".join(pending))
    return _cond("Progressing", False, "RolloutComplete", "every component runs the current spec")


def degraded_condition(
    obs: Observation, network: Condition, certificates: Condition | None = None
) -> Condition:
    if obs.problems:
        return _cond("Degraded", True, "InvalidSpec", "; ".join(obs.problems))
    if obs.apply_errors:
        return _cond("Degraded", True, "ApplyFailed", "; ".join(obs.apply_errors))
    if network.status == "False":
        return _cond("Degraded", True, "NetworkNotReady", network.message)
    # Waiting for cert-manager is progress, not a fault; a missing CRD or a failure is.
    if certificates is not None and certificates.reason in ("IssueFailed", "CertManagerCRDMissing"):
        return _cond("Degraded", True, "CertificatesNotReady", certificates.message)
    return _cond("Degraded", False, "AsExpected", "no problems found")


def _with_times(
    new: Condition, previous: dict[str, Condition], generation: int, now: str
) -> Condition:
    old = previous.get(new.type)
    changed = old is None or old.status != new.status
    return new.model_copy(
        update={
            "observed_generation": generation,
            "last_transition_time": now if changed or old is None else old.last_transition_time,
        }
    )


def parse_status(raw: Obj | None) -> DualPathClusterStatus:
    try:
        return DualPathClusterStatus.model_validate(raw or {})
    except ValueError:
        # Someone wrote garbage into status: start over rather than crash.
        return DualPathClusterStatus()


def compute_status(previous_raw: Obj | None, obs: Observation, now: str) -> DualPathClusterStatus:
    previous = parse_status(previous_raw)
    prev_conditions = {c.type: c for c in previous.conditions}
    network = network_condition(obs, prev_conditions)
    certificates = certificates_condition(obs, prev_conditions)
    if obs.problems:  # not evaluated: keep what was known
        engines = prev_conditions.get("EnginesReady") or engines_condition(obs)
        pool = prev_conditions.get("InferencePoolReady") or inference_pool_condition(obs)
    else:
        engines, pool = engines_condition(obs), inference_pool_condition(obs)
    conditions = [
        ready_condition(obs, network, certificates, engines),
        progressing_condition(obs),
        degraded_condition(obs, network, certificates),
        network,
        monitoring_condition(obs, prev_conditions),
        certificates,
        engines,
        pool,
    ]
    by_type = {c.type: _with_times(c, prev_conditions, obs.generation, now) for c in conditions}
    return DualPathClusterStatus(
        observed_generation=obs.generation,
        conditions=[by_type[t] for t in CONDITION_TYPES],
        agents=AgentsStatus(prefill=role_status(obs.prefill), decode=role_status(obs.decode)),
        controller=ControllerStatus(
            desired=obs.controller.desired,
            ready=obs.controller.ready,
            endpoint=obs.controller_endpoint,
        ),
        config_hash=obs.config_hash or previous.config_hash,
        pdb_api_version=obs.pdb_api_version or previous.pdb_api_version,
        network_attachments=list(obs.network.applied)
        if obs.network
        else previous.network_attachments,
        engines=engines_status(obs.engines)
        if obs.engines
        else (previous.engines if obs.problems else None),
    )


def engines_status(engines: EnginesState) -> EnginesStatus:
    return EnginesStatus(
        prefill=role_engines_status(engines, "prefill"),
        decode=role_engines_status(engines, "decode"),
        router_ready=engines.router.ready,
        router_endpoint=engines.router_endpoint,
    )


def _without_empty_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_without_empty_strings(v) for v in value]
    return value


def status_to_json(status: DualPathClusterStatus) -> Obj:
    # Empty strings are left out: they mean the same as absent here, and the v1.20 test
    # API server rejects "" in custom resources as null.
    return dict(
        _without_empty_strings(status.model_dump(mode="json", by_alias=True, exclude_none=True))
    )


def status_changed(previous_raw: Obj | None, new: DualPathClusterStatus) -> bool:
    return status_to_json(parse_status(previous_raw)) != status_to_json(new)


# Which transitions are worth an Event, and of which type.
_WARN_WHEN = {
    "Ready": "False",
    "Degraded": "True",
    "NetworkReady": "False",
    "MonitoringReady": "False",
    "CertificatesReady": "False",
}


def transition_events(previous_raw: Obj | None, new: DualPathClusterStatus) -> list[EventSpec]:
    """Events for conditions whose status changed (or, for a bad condition, whose reason or
    message changed: a different invalid spec deserves a new warning)."""
    prev = {c.type: c for c in parse_status(previous_raw).conditions}
    events = []
    for cond in new.conditions:
        old = prev.get(cond.type)
        bad = _WARN_WHEN.get(cond.type) == cond.status
        same_status = old is not None and old.status == cond.status
        same_text = old is not None and (old.reason, old.message) == (cond.reason, cond.message)
        if same_status and (not bad or same_text):
            continue
        if old is None and not bad and cond.type != "Ready":
            continue  # the first reconcile: only Ready and problems are news
        if cond.type == "Progressing" and cond.status == "False" and cond.reason == "InvalidSpec":
            continue  # the Degraded warning says it
        reason = cond.reason if bad or cond.type != "Degraded" else "Recovered"
        events.append(EventSpec("Warning" if bad else "Normal", reason, cond.message))
    return events


@dataclass
class ChildChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def message(self) -> str:
        parts = []
        for verb, names in (
            ("created", self.created),
            ("updated", self.updated),
            ("deleted", self.deleted),
        ):
            if names:
                parts.append(f"{verb} {', '.join(names)}")
        return "; ".join(parts)[:MAX_MESSAGE]
