"""Pod hardening and NetworkPolicies of everything the operator builds and the chart
installs.

Every workload built for both sample DualPathClusters, and the chart's operator Deployment,
is checked against the Pod Security Standards' rules (written out below from the
standard, not taken from the builders): "restricted" for the traffic controller and the
operator; for the agents, capabilities drop ALL with IPC_LOCK the only addition (and only
for a root agent, the one kind of process it reaches), seccomp RuntimeDefault, a read-only
root filesystem, no privilege escalation, and non-root unless the store is a hostPath.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dualpath_operator import children
from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.children import networkpolicy
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.constants import APP_UID, LABEL_CLUSTER
from dualpath_operator.discovery import Capabilities
from dualpath_operator.permissions import allows
from dualpath_operator.validation import parse_spec

from hack import render_manifests as rm

REPO = Path(__file__).resolve().parents[2]
SAMPLES = {
    "minimal": REPO / "manifests" / "samples" / "dualpathcluster-minimal.yaml",
    "full": REPO / "manifests" / "samples" / "dualpathcluster-full.yaml",
}
# Every add-on served, so every child kind the operator can build is built.
ALL_CAPS = Capabilities(
    pdb_api_version="policy/v1", network_attachments=True, service_monitors=True
)
POD_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
# Pod Security Standards, restricted profile.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
RESTRICTED_ADDABLE = {"NET_BIND_SERVICE"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


# --- what gets checked ---------------------------------------------------------------------


def sample_ctx(name: str, caps: Capabilities = ALL_CAPS) -> ClusterContext:
    cr = yaml.safe_load(SAMPLES[name].read_text())
    spec, problems = parse_spec(cr["spec"])
    assert spec is not None and not problems, problems
    return ClusterContext(cr["metadata"]["name"], "ns1", "uid-1", 1, spec, caps)


def ctx_of(spec: dict[str, Any]) -> ClusterContext:
    raw = {"storage": {"model": {"preset": "tiny-test"}}, **spec}
    return ClusterContext(
        "demo", "ns1", "uid-1", 1, DualPathClusterSpec.model_validate(raw), ALL_CAPS
    )


def all_children(ctx: ClusterContext) -> list[dict[str, Any]]:
    return [o for kind in children.CHILD_KINDS for o in children.desired(kind, ctx)]


def workloads(ctx: ClusterContext) -> list[dict[str, Any]]:
    objs = all_children(ctx)
    # A workload kind nobody listed here would go unchecked: fail instead.
    assert not {o["kind"] for o in objs} & {"Pod", "CronJob"}
    return [o for o in objs if o["kind"] in POD_TEMPLATE_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A security field as the kubelet sees it: the container's value wins over the pod's."""
    sc = container.get("securityContext") or {}
    if field in sc:
        return sc[field]
    return (pod.get("securityContext") or {}).get(field)


def volume_type(volume: dict[str, Any]) -> str:
    (kind,) = [k for k in volume if k != "name"]
    return kind


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" (which includes "baseline"), plus a read-only
    root filesystem, as a list of what a pod breaks."""
    out = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            out.append(host)
    for v in pod.get("volumes", []):
        if volume_type(v) not in RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {v['name']}: {volume_type(v)}")
    for c in containers(pod):
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities not dropping ALL")
        if set(caps.get("add", [])) - RESTRICTED_ADDABLE:
            out.append(f"{name}: adds {caps['add']}")
        if effective(pod, c, "runAsNonRoot") is not True:
            out.append(f"{name}: runAsNonRoot not true")
        if effective(pod, c, "runAsUser") in (0, None):
            # None passes the standard but leaves the check to the image's USER at run time;
            # a numeric uid lets the kubelet verify runAsNonRoot before starting anything.
            out.append(f"{name}: no numeric non-root runAsUser")
        seccomp = effective(pod, c, "seccompProfile") or {}
        if seccomp.get("type") not in SECCOMP_OK:
            out.append(f"{name}: seccomp {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: writable root filesystem")
        out += scratch_violations(pod, c)
    return out


def scratch_violations(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """With a read-only root filesystem, /tmp must be a writable emptyDir."""
    emptydirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if len(tmp) != 1 or tmp[0]["name"] not in emptydirs or tmp[0].get("readOnly"):
        return [f"{container['name']}: /tmp is not a writable emptyDir"]
    return []


def agent_violations(pod: dict[str, Any], root_allowed: bool) -> list[str]:
    out = []
    if pod.get("hostPID") or pod.get("hostIPC"):
        out.append("host PID/IPC namespace")
    for c in containers(pod):
        name = c["name"]
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        if caps.get("drop") != ["ALL"]:
            out.append(f"{name}: drops {caps.get('drop')}, not ALL")
        if not set(caps.get("add", [])) <= {"IPC_LOCK"}:
            out.append(f"{name}: adds {caps['add']}")
        if (effective(pod, c, "seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{name}: seccomp not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: writable root filesystem")
        out += scratch_violations(pod, c)
        root = effective(pod, c, "runAsUser") in (0, None)
        if root:
            if not root_allowed:
                out.append(f"{name}: runs as root")
            # IPC_LOCK is what root is for; a root agent without it could not pin memory.
            if caps.get("add") != ["IPC_LOCK"]:
                out.append(f"{name}: root without IPC_LOCK")
        else:
            if effective(pod, c, "runAsNonRoot") is not True:
                out.append(f"{name}: runAsNonRoot not true")
            if caps.get("add"):
                # Kubernetes sets no ambient capabilities: it could never reach the process.
                out.append(f"{name}: non-root with added {caps['add']}")
    return out


# --- the samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_workload_of_the_samples_is_hardened(sample: str) -> None:
    ctx = sample_ctx(sample)
    built = workloads(ctx)
    assert sorted(w["kind"] for w in built) == ["DaemonSet", "DaemonSet", "Deployment"]
    host_path = ctx.spec.storage.backend == "hostPath"
    for w in built:
        pod = pod_spec(w)
        component = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "controller":
            assert restricted_violations(pod) == [], w["metadata"]["name"]
        else:
            assert component == "agent"
            assert agent_violations(pod, root_allowed=host_path) == [], w["metadata"]["name"]


def test_the_samples_cover_a_root_and_a_non_root_agent() -> None:
    minimal = pod_spec(workloads(sample_ctx("minimal"))[0])  # hostPath
    assert minimal["containers"][0]["securityContext"]["runAsUser"] == 0
    assert minimal["containers"][0]["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    full = [w for w in workloads(sample_ctx("full")) if w["kind"] == "DaemonSet"]
    for ds in full:  # sharedFilesystem
        sc = pod_spec(ds)["securityContext"]
        assert sc["runAsUser"] == sc["runAsGroup"] == sc["fsGroup"] == APP_UID
        assert sc["runAsNonRoot"] is True
        assert "add" not in pod_spec(ds)["containers"][0]["securityContext"]["capabilities"]


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_child_of_the_samples_is_valid_kubernetes(sample: str) -> None:
    """The hardening fields are real fields in the right places (strict schema)."""
    for obj in all_children(sample_ctx(sample)):
        if obj["apiVersion"].startswith(("monitoring.coreos.com", "k8s.cni.cncf.io")):
            continue  # add-on CRDs: no schema ships with kubernetes-validate
        kubernetes_validate.validate(obj, "1.28.0", strict=True)


# --- the operator itself ---------------------------------------------------------------------


def operator_deployments() -> list[dict[str, Any]]:
    rendered = [d for d in rm.render_templates() if d["kind"] == "Deployment"]
    installed = [
        d
        for d in yaml.safe_load_all(rm.INSTALL_YAML.read_text())
        if d and d["kind"] == "Deployment"
    ]
    assert len(rendered) == len(installed) == 1
    return [*rendered, *installed]


def test_the_operator_deployment_is_restricted() -> None:
    for dep in operator_deployments():
        pod = pod_spec(dep)
        assert restricted_violations(pod) == []
        assert pod["securityContext"]["runAsUser"] == APP_UID


def test_the_image_user_is_the_uid_pods_run_as() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^USER {APP_UID}:{APP_UID}$", dockerfile, re.M)
    script = (REPO / "hack" / "image-build.sh").read_text()
    assert re.search(rf"^APP_UID={APP_UID}$", script, re.M)


# --- agents: root only where the storage needs it -----------------------------------------

PVC = {"backend": "pvc", "pvc": {"claimName": "kv"}, "model": {"preset": "tiny-test"}}
SHARED = {"backend": "sharedFilesystem", "path": "/mnt/fs", "model": {"preset": "tiny-test"}}


def agent_pod(spec: dict[str, Any]) -> dict[str, Any]:
    ds = next(w for w in workloads(ctx_of(spec)) if w["kind"] == "DaemonSet")
    return pod_spec(ds)


def test_pvc_agents_meet_restricted() -> None:
    # The README's claim: a pvc-backed cluster's namespace can enforce "restricted".
    pod = agent_pod({"storage": PVC})
    assert restricted_violations(pod) == []
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_host_path_volumes_mean_privileged_namespaces() -> None:
    for storage in (SHARED, {"model": {"preset": "tiny-test"}}):
        problems = restricted_violations(agent_pod({"storage": storage}))
        assert "volume kv-store: hostPath" in problems
    assert "hostNetwork" in restricted_violations(
        agent_pod({"storage": PVC, "agent": {"hostNetwork": True}})
    )


def test_run_as_non_root_overrides_the_backend_default() -> None:
    root = agent_pod({"storage": PVC, "agent": {"runAsNonRoot": False}})
    sc = root["containers"][0]["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["IPC_LOCK"]
    assert agent_violations(root, root_allowed=True) == []
    non_root = agent_pod({"storage": SHARED, "agent": {"runAsNonRoot": True}})
    assert agent_violations(non_root, root_allowed=False) == []


def test_run_as_non_root_is_rejected_where_it_cannot_work() -> None:
    base = {"storage": {"model": {"preset": "tiny-test"}}}
    _, problems = parse_spec({**base, "agent": {"runAsNonRoot": True}})
    assert [p.field for p in problems] == ["spec.agent.runAsNonRoot"]
    _, problems = parse_spec({"storage": PVC, "agent": {"runAsNonRoot": True, "privileged": True}})
    assert [p.field for p in problems] == ["spec.agent.runAsNonRoot"]
    _, problems = parse_spec({"storage": PVC, "agent": {"runAsNonRoot": True}})
    assert problems == []


def test_privileged_agents_are_root_and_say_so() -> None:
    pod = agent_pod({"agent": {"privileged": True}})
    sc = pod["containers"][0]["securityContext"]
    assert sc["privileged"] is True and sc["runAsUser"] == 0
    # Kubernetes rejects allowPrivilegeEscalation: false next to privileged: true.
    assert "allowPrivilegeEscalation" not in sc


# --- NetworkPolicies --------------------------------------------------------------------------


def policies(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p["spec"] for p in networkpolicy.build(ctx_of(spec))}


def rule_ports(rule: dict[str, Any]) -> list[int] | None:
    return None if "ports" not in rule else [p["port"] for p in rule["ports"]]


OWN_PODS = {"podSelector": {"matchLabels": {LABEL_CLUSTER: "demo"}}}
SCRAPERS = {"namespaceSelector": {"matchLabels": {"dualpath.io/metrics-scraper": "true"}}}


def test_default_policies_admit_only_own_pods_and_scrapers() -> None:
    pols = policies({})
    assert set(pols) == {"demo-agents", "demo-controller"}
    agents, ctl = pols["demo-agents"], pols["demo-controller"]
    for pol, component in ((agents, "agent"), (ctl, "controller")):
        assert pol["policyTypes"] == ["Ingress"]
        assert pol["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "dualpath",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": component,
        }
    # Agents: every port from the cluster's own pods (gRPC and the NIXL/UCX data plane,
    # whose ports are chosen at run time), the metrics port from the scrapers.
    assert agents["ingress"] == [
        {"from": [OWN_PODS]},
        {"from": [SCRAPERS], "ports": [{"protocol": "TCP", "port": 9101}]},
    ]
    assert ctl["ingress"] == [
        {"from": [OWN_PODS], "ports": [{"protocol": "TCP", "port": 50051}]},
        {"from": [SCRAPERS], "ports": [{"protocol": "TCP", "port": 9100}]},
    ]


def test_the_operators_pods_carry_the_label_the_policies_admit() -> None:
    c = ctx_of({})
    for w in workloads(c):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert labels[LABEL_CLUSTER] == "demo"


def test_policies_follow_ports_and_peers() -> None:
    pols = policies(
        {
            "agent": {"grpcPort": 6000, "metricsPort": 6001},
            "trafficController": {"port": 7000, "metricsPort": 7001},
            "networkPolicy": {
                "metricsFrom": [
                    {
                        "namespaceSelector": {"matchLabels": {"team": "obs"}},
                        "podSelector": {
                            "matchExpressions": [
                                {"key": "app", "operator": "In", "values": ["prometheus"]}
                            ]
                        },
                    }
                ],
                "clientsFrom": [{"namespaceSelector": {"matchLabels": {"name": "engines"}}}],
            },
        }
    )
    scraper = {
        "namespaceSelector": {"matchLabels": {"team": "obs"}},
        "podSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["prometheus"]}]
        },
    }
    engines = {"namespaceSelector": {"matchLabels": {"name": "engines"}}}
    agents, ctl = pols["demo-agents"]["ingress"], pols["demo-controller"]["ingress"]
    assert agents[0] == {"from": [OWN_PODS, engines]}
    assert (agents[1]["from"], rule_ports(agents[1])) == ([scraper], [6001])
    assert (ctl[0]["from"], rule_ports(ctl[0])) == ([OWN_PODS, engines], [7000])
    assert (ctl[1]["from"], rule_ports(ctl[1])) == ([scraper], [7001])


def test_metrics_off_or_no_scrapers_admit_no_scraper() -> None:
    for spec in ({"monitoring": {"metrics": False}}, {"networkPolicy": {"metricsFrom": []}}):
        pols = policies(spec)
        # A rule without `from` would admit everyone: there must be none.
        assert pols["demo-agents"]["ingress"] == [{"from": [OWN_PODS]}]
        assert len(pols["demo-controller"]["ingress"]) == 1
        assert pols["demo-controller"]["ingress"][0]["from"] == [OWN_PODS]


def test_opt_out_builds_nothing_and_prunes() -> None:
    assert policies({"networkPolicy": {"enabled": False}}) == {}
    assert networkpolicy.KIND.prune  # what an earlier spec created is deleted


def test_host_network_agents_get_no_policy_and_an_open_controller_port() -> None:
    pols = policies({"agent": {"hostNetwork": True}})
    # NetworkPolicy does not police host-network pods, and their traffic comes from node
    # addresses no pod selector matches: the gRPC rule has no `from` (any source).
    assert set(pols) == {"demo-controller"}
    grpc, metrics = pols["demo-controller"]["ingress"]
    assert grpc == {"ports": [{"protocol": "TCP", "port": 50051}]}
    assert metrics["from"] == [SCRAPERS]


def test_policies_are_valid_and_an_empty_peer_is_rejected() -> None:
    for obj in networkpolicy.build(ctx_of({"networkPolicy": {"clientsFrom": [OWN_PODS]}})):
        kubernetes_validate.validate(obj, "1.28.0", strict=True)
    _, problems = parse_spec(
        {"storage": {"model": {"preset": "tiny-test"}}, "networkPolicy": {"metricsFrom": [{}]}}
    )
    assert [p.field for p in problems] == ["spec.networkPolicy.metricsFrom[0]"]


def test_the_operator_may_manage_network_policies() -> None:
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        assert allows("networking.k8s.io", "networkpolicies", verb)
    cluster_role = next(
        d
        for d in rm.render_templates()
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "dualpath-operator"
    )
    assert any(
        "networking.k8s.io" in r["apiGroups"]
        and "networkpolicies" in r["resources"]
        and {"get", "list", "watch", "create", "patch", "delete"} <= set(r["verbs"])
        for r in cluster_role["rules"]
    )


def test_the_chart_polices_the_operators_metrics_port() -> None:
    docs = rm.render_templates()
    (pol,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert pol["spec"]["podSelector"] == dep["spec"]["selector"]
    port = dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert port["name"] == "metrics"
    assert pol["spec"]["ingress"] == [
        {"from": [SCRAPERS], "ports": [{"protocol": "TCP", "port": port["containerPort"]}]}
    ]
    kubernetes_validate.validate(pol, "1.28.0", strict=True)
    closed = rm.render_templates({"networkPolicy": {"metricsFrom": []}})
    assert [d["spec"]["ingress"] for d in closed if d["kind"] == "NetworkPolicy"] == [[]]
    off = rm.render_templates({"networkPolicy": {"enabled": False}})
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
