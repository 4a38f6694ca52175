"""The Helm chart, through Helm's own engine (helm-python-sdk): it lints clean, its values
schema rejects bad input naming the field, everything it renders is valid for current
Kubernetes (kubernetes-validate, strict), its RBAC is least privilege yet covers what the
operator manages, and manifests/install.yaml is rendered from it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from hack import render_manifests as rm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dualpath"
# Current Kubernetes releases the rendered objects must be valid for (>= 1.28).
KUBE_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Prometheus Operator kinds: no schema ships with kubernetes-validate (they are CRDs).
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor"}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "ha-monitoring": {
        "operator": {"replicas": 2},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True},
        },
        "grafana": {"dashboard": {"namespace": "monitoring"}},
    },
    "no-extras": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "mine"},
        "metrics": {"service": {"enabled": False}},
        "grafana": {"dashboard": {"enabled": False}},
        "operator": {"leaderElection": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return rm.render_templates(values, name="dualpath", namespace="dualpath-system")


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in by_kind(docs, kind)]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(docs, "Deployment")
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_has_no_warnings(values: dict[str, Any]) -> None:
    report = helm_python.lint(str(CHART), values, strict=True, namespace="dualpath-system")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"operator": {"logLevel": "loud"}}, "/operator/logLevel"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
        (
            {"metrics": {"serviceMonitor": {"interval": "often"}}},
            "/metrics/serviceMonitor/interval",
        ),
        ({"operatr": {}}, "operatr"),
    ],
)
def test_values_schema_rejects_bad_input_naming_the_field(
    values: dict[str, Any], field: str
) -> None:
    chart = helm_python.Chart.load(str(CHART))
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.render(values, name="dualpath", namespace="dualpath-system")
    assert field in str(err.value)


def test_service_monitor_needs_the_metrics_service() -> None:
    with pytest.raises(helm_python.HelmError, match=r"metrics\.service\.enabled"):
        render({"metrics": {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}}})


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_objects_are_valid_for_current_kubernetes(
    values: dict[str, Any], kube_version: str
) -> None:
    docs = render(values) + rm.chart_crds()
    unchecked = set()
    for doc in docs:
        if doc["kind"] in PROMETHEUS_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            unchecked.add(doc["kind"])
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)
    assert unchecked <= PROMETHEUS_KINDS


def test_install_yaml_is_valid_and_not_stale() -> None:
    assert not rm.install_yaml_is_stale(), "run `python hack/render_manifests.py`"
    docs = [d for d in yaml.safe_load_all(rm.INSTALL_YAML.read_text()) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[0], strict=True)
    kinds = [d["kind"] for d in docs]
    # kubectl apply creates in file order: namespace and CRD before what uses them.
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    namespaced = [d for d in docs if "namespace" in d["metadata"]]
    assert {d["metadata"]["namespace"] for d in namespaced} == {rm.NAMESPACE}


def test_chart_crds_are_the_generated_ones() -> None:
    chart_crds = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    manifest_crds = {p.name: p.read_text() for p in (REPO / "manifests" / "crds").glob("*.yaml")}
    assert chart_crds and chart_crds == manifest_crds


def test_chart_version_follows_the_project() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert meta["version"] == version and meta["appVersion"] == version
    assert meta["apiVersion"] == "v2"


def test_operator_deployment_defaults() -> None:
    docs = render()
    container = operator_container(docs)
    assert container["image"] == "docker.io/dualpath/dualpath:0.1.0"
    assert container["args"][0] == "operator" and "--all-namespaces" in container["args"]
    assert "--leader-elect" in container["args"]
    assert "--lease-namespace=dualpath-system" in container["args"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    pod_sc = one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] != 0
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = one(docs, "Service")
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_image_tag_and_namespaces_are_honoured() -> None:
    docs = render(
        {
            "image": {"repository": "registry.example/dp", "tag": "dev-1"},
            "operator": {
                "watchNamespaces": ["team-a", "team-b"],
                "leaderElection": {"enabled": False},
            },
        }
    )
    container = operator_container(docs)
    assert container["image"] == "registry.example/dp:dev-1"
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"] and "--no-leader-elect" in container["args"]


# --- RBAC ----------------------------------------------------------------------------------

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "*"}


def rules_of(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return list(one(docs, kind, name)["rules"])


def allows(rules: list[dict[str, Any]], group: str, resource: str, verbs: set[str]) -> bool:
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs = verbs - set(rule["verbs"])
    return not verbs


def test_rbac_has_no_wildcards_secrets_or_escalation() -> None:
    docs = render()
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(docs, kind):
            for rule in role["rules"]:
                assert "*" not in rule["apiGroups"] and "*" not in rule["resources"], role[
                    "metadata"
                ]
                assert not DANGEROUS_VERBS & set(rule["verbs"]), role["metadata"]
                # Secrets: only the operator's own reconcile role, which issues the
                # clusters' mTLS CA and certificates; never a collection delete.
                if "secrets" in rule["resources"]:
                    assert (kind, role["metadata"]["name"]) == ("ClusterRole", "dualpath-operator")
                    assert "deletecollection" not in rule["verbs"]


def test_operator_may_manage_every_child_kind_it_watches() -> None:
    from dualpath_operator.handlers import CHILD_SELECTORS

    rules = rules_of(render(), "ClusterRole", "dualpath-operator")
    for group_or_version, plural in CHILD_SELECTORS:
        group = "" if group_or_version == "v1" else group_or_version
        assert allows(
            rules, group, plural, {"get", "list", "watch", "create", "patch", "delete"}
        ), f"{group}/{plural}"
    assert allows(rules, "dualpath.io", "dualpathclusters", {"get", "list", "watch", "patch"})
    assert allows(rules, "dualpath.io", "dualpathclusters/status", {"patch"})
    # Kubernetes lets the operator grant the traffic controller only what it holds itself.
    assert allows(rules, "", "pods", {"get", "list", "watch"})
    assert allows(rules, "", "endpoints", {"get", "list", "watch"})


def test_cluster_wide_access_is_read_only_and_leases_are_namespaced() -> None:
    docs = render()
    for rule in rules_of(docs, "ClusterRole", "dualpath-operator-cluster-read"):
        assert not WRITE_VERBS & set(rule["verbs"]), rule
    lease_role = one(docs, "Role", "dualpath-operator-leader-election")
    assert lease_role["metadata"]["namespace"] == "dualpath-system"
    assert allows(lease_role["rules"], "coordination.k8s.io", "leases", {"get", "create", "update"})
    assert not allows(
        rules_of(docs, "ClusterRole", "dualpath-operator"), "coordination.k8s.io", "leases", {"get"}
    )


def test_watch_namespaces_bind_the_operator_role_only_there() -> None:
    docs = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    bindings = [
        b
        for b in by_kind(docs, "ClusterRoleBinding")
        if b["roleRef"]["name"] == "dualpath-operator"
    ]
    assert not bindings, "no cluster-wide write access when namespaces are listed"
    role_bindings = [
        b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "dualpath-operator"
    ]
    assert sorted(b["metadata"]["namespace"] for b in role_bindings) == ["team-a", "team-b"]
    for b in role_bindings:
        assert b["roleRef"]["kind"] == "ClusterRole"
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "dualpath-operator", "namespace": "dualpath-system"}
        ]


def test_rbac_and_service_account_can_be_left_to_the_user() -> None:
    docs = render(VALUE_SETS["no-extras"])
    assert {d["kind"] for d in docs} == {"Deployment"}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# --- monitoring ------------------------------------------------------------------------


def test_monitoring_objects_select_the_operator_and_components() -> None:
    docs = render(VALUE_SETS["ha-monitoring"])
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    pm = one(docs, "PodMonitor")
    components = pm["spec"]["selector"]["matchExpressions"][0]["values"]
    assert set(components) == {"agent", "controller"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_pod_monitor_matches_the_operators_component_labels() -> None:
    from dualpath_operator.children import daemonset, deployment
    from dualpath_operator.constants import MANAGED_BY_VALUE

    pm = one(render(VALUE_SETS["ha-monitoring"]), "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": MANAGED_BY_VALUE
    }
    assert set(pm["spec"]["selector"]["matchExpressions"][0]["values"]) == {
        daemonset.COMPONENT,
        deployment.COMPONENT,
    }


def test_notes_tell_the_next_steps() -> None:
    notes = rm.render_notes({"operator": {"watchNamespaces": ["team-a"]}})
    assert "team-a" in notes and "dualpath.io/role=prefill" in notes
    assert "kubectl -n dualpath-system rollout status deployment/dualpath-operator" in notes


def test_the_charts_operator_roles_grant_every_rule_the_operator_needs() -> None:
    from dualpath_operator.permissions import OPERATOR_RULES

    docs = render()
    # ClusterRoles for the clusters' namespaces; a Role in its own namespace (the Lease).
    roles = [*by_kind(docs, "ClusterRole"), *by_kind(docs, "Role")]
    granted = [rule for role in roles for rule in role["rules"]]
    for rule in OPERATOR_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert allows(granted, group, resource, set(rule["verbs"])), (group, resource)
