"""Semantic rules: each names the offending field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from dualpath_operator.validation import name_problems, parse_spec

BASE: dict[str, Any] = {"storage": {"model": {"preset": "tiny-test"}}}


def problems_of(patch: dict[str, Any]) -> list[str]:
    spec = copy.deepcopy(BASE)
    for dotted, value in patch.items():
        node = spec
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    _, problems = parse_spec(spec)
    return [str(p) for p in problems]


def test_the_base_spec_is_valid():
    assert problems_of({}) == []


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        (
            {
                "network.qos": [
                    {"name": "kv", "purpose": "kvCache", "dscp": 10, "priority": 1},
                    {
                        "name": "coll",
                        "purpose": "collectives",
                        "dscp": 10,
                        "priority": 3,
                        "serviceLevel": 1,
                    },
                ]
            },
            "spec.network.qos[1].dscp",
            "must not share a DSCP",
        ),
        (
            {
                "network.qos": [
                    {"name": "kv", "purpose": "kvCache", "dscp": 10, "trafficClass": 104}
                ]
            },
            "spec.network.qos[0].trafficClass",
            "carries DSCP 26",
        ),
        (
            {"network.qos": [{"name": "c", "purpose": "collectives", "dscp": 26}]},
            "spec.network.qos",
            "exactly one class with purpose kvCache",
        ),
        (
            {
                "network.qos": [
                    {"name": "kv", "purpose": "kvCache", "dscp": 10, "bandwidthPercent": 60},
                    {
                        "name": "c",
                        "purpose": "collectives",
                        "dscp": 26,
                        "priority": 3,
                        "serviceLevel": 1,
                        "bandwidthPercent": 60,
                    },
                ]
            },
            "spec.network.qos",
            "adds up to 120",
        ),
        (
            {
                "network.qos": [
                    {"name": "kv", "purpose": "kvCache", "dscp": 10, "priority": 3},
                    {
                        "name": "c",
                        "purpose": "collectives",
                        "dscp": 26,
                        "priority": 3,
                        "serviceLevel": 1,
                    },
                ]
            },
            "spec.network.qos[0].priority",
            "not be isolated",
        ),
        ({"storage.model": {"preset": "tiny-test", "layers": 3}}, "spec.storage.model", "not both"),
        ({"storage.model": {"layers": 3}}, "spec.storage.model", "both layers"),
        ({"storage.backend": "pvc"}, "spec.storage.pvc", "required when backend is pvc"),
        (
            {"storage.pvc": {"claimName": "kv"}},
            "spec.storage.pvc",
            "only used with backend pvc",
        ),
        (
            {
                "network.attachments": [
                    {"name": "a", "cniType": "macvlan", "ipam": {"range": "10.0.0.0/24"}}
                ]
            },
            "spec.network.attachments[0].master",
            "required for cniType macvlan",
        ),
        (
            {"network.attachments": [{"name": "a", "master": "eth1"}]},
            "spec.network.attachments[0].ipam.range",
            "required for ipam type whereabouts",
        ),
        (
            {"network.attachments": [{"name": "a", "cniType": "sriov", "ipam": {"type": "dhcp"}}]},
            "spec.network.attachments[0].rdmaResource",
            "VF resource",
        ),
        (
            {"nodes.decode": {"nodeSelector": {"dualpath.io/role": "prefill"}}},
            "spec.nodes.decode",
            "same nodes",
        ),
        ({"nodes.prefill": {"nodeSelector": {}}}, "spec.nodes.prefill", "selects all"),
        (
            {"nodes.prefill": {"matchExpressions": [{"key": "gpu", "operator": "In"}]}},
            "spec.nodes.prefill.matchExpressions[0].values",
            "at least one value",
        ),
        ({"agent.metricsPort": 50061}, "spec.agent.metricsPort", "must differ"),
        (
            {"agent.hostBuffer": "8Gi", "agent.resources": {"limits": {"memory": "4Gi"}}},
            "spec.agent.hostBuffer",
            "does not fit in the memory limit",
        ),
        (
            {"agent.resources": {"requests": {"cpu": "lots"}}},
            "spec.agent.resources.requests.cpu",
            "not a Kubernetes quantity",
        ),
        (
            {"agent.updateStrategy": {"maxUnavailable": "half"}},
            "spec.agent.updateStrategy.maxUnavailable",
            "percentage",
        ),
        (
            {"agent.extraEnv": [{"name": "UCX_IB_SL", "value": "3"}]},
            "spec.agent.extraEnv[0].name",
            "set by the operator",
        ),
        (
            {"trafficController": {"policy": "round-robin", "parameters": {"extra": {"z": "2"}}}},
            "spec.trafficController.parameters.extra.z",
            "no such parameter",
        ),
        (
            {
                "trafficController": {
                    "policy": "dualpath-split",
                    "parameters": {"extra": {"min_split_fraction": "a lot"}},
                }
            },
            "spec.trafficController.parameters.extra.min_split_fraction",
            "not a number",
        ),
        (
            {"monitoring": {"metrics": False, "serviceMonitor": True}},
            "spec.monitoring.serviceMonitor",
            "metrics: true",
        ),
    ],
)
def test_semantic_rule_names_the_field(patch, field, words):
    problems = problems_of(patch)
    matching = [p for p in problems if p.startswith(f"{field}: ") and words in p]
    assert matching, f"expected {field} ... {words!r}, got {problems}"


def test_schema_level_errors_name_the_field_by_its_api_name():
    _, problems = parse_spec({"storage": {"model": {"preset": "tiny-test"}, "blockTokens": 0}})
    assert [p.field for p in problems] == ["spec.storage.blockTokens"]
    _, problems = parse_spec({"network": {}})
    assert [p.field for p in problems] == ["spec.storage"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("demo", True), ("a" * 40, True), ("a" * 41, False), ("1st", False), ("a.b", False)],
)
def test_cluster_names_must_fit_child_names(name, ok):
    assert (name_problems(name) == []) is ok
