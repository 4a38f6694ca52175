"""Status computed from the children's own status; events on transitions only."""

from __future__ import annotations

import json
from typing import Any

from dualpath_operator.status import (
    CertificatesState,
    MonitoringState,
    NetworkState,
    Observation,
    Rollout,
    compute_status,
    observe_daemonset,
    observe_deployment,
    status_changed,
    status_to_json,
    transition_events,
)

READY = Rollout(desired=2, ready=2, updated=2, available=2, complete=True, exists=True)
NO_NET = NetworkState(attachments_requested=0, nad_supported=False)


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 3,
        "prefill": READY,
        "decode": READY,
        "controller": Rollout(
            desired=1, ready=1, updated=1, available=1, complete=True, exists=True
        ),
        "network": NO_NET,
        "monitoring": MonitoringState(
            metrics=True, service_monitor_requested=False, service_monitor_supported=False
        ),
        "certificates": CertificatesState(
            requested="auto", mode="operator", cert_manager_served=False
        ),
        "config_hash": "abc",
        "controller_endpoint": "demo-controller.ns.svc:50051",
    }
    base.update(kw)
    return Observation(**base)


def conditions(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_daemonset_status_is_read_from_the_daemonset():
    ds = {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "desiredNumberScheduled": 3,
            "numberReady": 2,
            "updatedNumberScheduled": 3,
            "numberAvailable": 2,
        },
    }
    r = observe_daemonset(ds)
    assert (r.desired, r.ready, r.updated, r.available, r.complete) == (3, 2, 3, 2, False)
    ds["status"]["numberAvailable"] = 3
    assert observe_daemonset(ds).complete
    ds["metadata"]["generation"] = 3  # a new spec the controller has not seen yet
    assert not observe_daemonset(ds).complete
    assert observe_daemonset(None) == Rollout()


def test_deployment_status_is_read_from_the_deployment():
    dep = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 1,
            "replicas": 3,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
        },
    }
    r = observe_deployment(dep)
    assert (r.desired, r.ready) == (2, 2)
    assert not r.complete  # an old replica is still around
    dep["status"]["replicas"] = 2
    assert observe_deployment(dep).complete


def test_all_ready():
    status = compute_status(None, obs(), "T1")
    assert conditions(status) == {
        "Ready": ("True", "AllComponentsReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
        "NetworkReady": ("True", "NoAttachments"),
        "MonitoringReady": ("True", "ServiceMonitorNotRequested"),
        "CertificatesReady": ("True", "OperatorIssued"),
        "EnginesReady": ("True", "NotRequested"),
        "InferencePoolReady": ("True", "NotRequested"),
    }
    assert status.agents.prefill.summary == "2/2"
    assert status.observed_generation == 3
    assert all(
        c.observed_generation == 3 and c.last_transition_time == "T1" for c in status.conditions
    )


def test_not_ready_reasons():
    assert conditions(compute_status(None, obs(prefill=Rollout(exists=True)), "T"))["Ready"] == (
        "False",
        "NoPrefillNodes",
    )
    half = Rollout(desired=2, ready=1, updated=2, available=1, exists=True)
    got = compute_status(None, obs(decode=half), "T")
    assert conditions(got)["Ready"] == ("False", "AgentsNotReady")
    assert conditions(got)["Progressing"] == ("True", "RollingOut")
    assert "decode agents: 2/2 updated, 1/2 available" in got.conditions[1].message
    no_ctl = Rollout(desired=1, exists=True)
    assert conditions(compute_status(None, obs(controller=no_ctl), "T"))["Ready"] == (
        "False",
        "ControllerNotReady",
    )


def test_missing_nad_crd_makes_network_not_ready_with_a_clear_reason():
    net = NetworkState(attachments_requested=1, nad_supported=False)
    got = compute_status(None, obs(network=net), "T")
    c = conditions(got)
    assert c["NetworkReady"] == ("False", "NetworkAttachmentDefinitionCRDMissing")
    assert c["Ready"] == ("False", "NetworkNotReady")
    assert c["Degraded"] == ("True", "NetworkNotReady")
    message = got.conditions[3].message
    assert "Multus" in message and "spec.network.attachments" in message
    ok = NetworkState(attachments_requested=1, nad_supported=True, applied=("demo-rdma0",))
    assert conditions(compute_status(None, obs(network=ok), "T"))["NetworkReady"] == (
        "True",
        "AttachmentsApplied",
    )


def test_invalid_spec_is_degraded_and_keeps_children_status():
    problems = ("spec.network.qos[1].dscp: DSCP 10 is already used",)
    got = compute_status(None, obs(problems=problems, network=None), "T")
    c = conditions(got)
    assert c["Degraded"] == ("True", "InvalidSpec")
    assert "spec.network.qos[1].dscp" in got.conditions[2].message
    assert c["Progressing"] == ("False", "InvalidSpec")
    assert c["Ready"] == ("True", "AllComponentsReady")  # the old children still serve
    nothing = Rollout()
    fresh = compute_status(
        None,
        obs(problems=problems, network=None, prefill=nothing, decode=nothing, controller=nothing),
        "T",
    )
    assert conditions(fresh)["Ready"] == ("False", "InvalidSpec")


def test_transition_times_and_status_writes_only_on_change():
    first = compute_status(None, obs(), "T1")
    raw = status_to_json(first)
    again = compute_status(raw, obs(), "T2")
    assert not status_changed(raw, again)  # nothing to write, no hot loop
    assert all(c.last_transition_time == "T1" for c in again.conditions)
    worse = compute_status(raw, obs(decode=Rollout(desired=2, ready=1, exists=True)), "T3")
    times = {c.type: c.last_transition_time for c in worse.conditions}
    assert times["Ready"] == "T3" and times["Degraded"] == "T1"
    assert status_changed(raw, worse)
    assert '""' not in json.dumps(status_to_json(worse))  # v1.20 rejects "" in CRs


def test_events_for_meaningful_transitions_only():
    first = compute_status(None, obs(), "T1")
    assert [(e.type, e.reason) for e in transition_events(None, first)] == [
        ("Normal", "AllComponentsReady")
    ]
    raw = status_to_json(first)
    assert transition_events(raw, compute_status(raw, obs(), "T2")) == []
    bad = compute_status(raw, obs(problems=("spec.x: bad",), network=None), "T3")
    events = [(e.type, e.reason) for e in transition_events(raw, bad)]
    assert events == [("Warning", "InvalidSpec")]
    bad_raw = status_to_json(bad)
    other = compute_status(bad_raw, obs(problems=("spec.y: worse",), network=None), "T4")
    assert [(e.type, e.reason) for e in transition_events(bad_raw, other)] == [
        ("Warning", "InvalidSpec")
    ]
    fixed = compute_status(status_to_json(other), obs(), "T5")
    assert ("Normal", "Recovered") in [
        (e.type, e.reason) for e in transition_events(status_to_json(other), fixed)
    ]


def test_a_service_monitor_asked_without_its_crd_is_reported_not_hidden():
    missing = MonitoringState(
        metrics=True, service_monitor_requested=True, service_monitor_supported=False
    )
    got = compute_status(None, obs(monitoring=missing), "T")
    c = conditions(got)
    assert c["MonitoringReady"] == ("False", "ServiceMonitorCRDMissing")
    assert c["Ready"] == ("True", "AllComponentsReady")  # the data path does not need it
    message = next(x.message for x in got.conditions if x.type == "MonitoringReady")
    assert "spec.monitoring.serviceMonitor" in message and "Prometheus Operator" in message
    events = transition_events(None, got)
    assert any(e.type == "Warning" and e.reason == "ServiceMonitorCRDMissing" for e in events)
    served = MonitoringState(
        metrics=True, service_monitor_requested=True, service_monitor_supported=True
    )
    assert conditions(compute_status(None, obs(monitoring=served), "T"))["MonitoringReady"] == (
        "True",
        "ServiceMonitorApplied",
    )
    off = MonitoringState(
        metrics=False, service_monitor_requested=True, service_monitor_supported=False
    )
    assert conditions(compute_status(None, obs(monitoring=off), "T"))["MonitoringReady"] == (
        "True",
        "MetricsDisabled",
    )
