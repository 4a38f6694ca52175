"""The operator against a real API server + controller-manager (v1.20 here).

The operator runs as a real subprocess (`dualpath operator`), stopped by pid. There are no
kubelets in this tier: pods are made Ready the way a scheduler and a kubelet would do it
(a Binding, then a pod status update) on fake Node objects, and the real DaemonSet and
Deployment controllers turn that into their own status, which the operator must follow.

The tests in this module share one operator and one namespace and run in file order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.process import OperatorProcess
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.crds import install_crd, simple_crd
from tests.support.metrics import sample_value
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crds" / "dualpath.io_dualpathclusters.yaml"
SAMPLES = REPO / "manifests" / "samples"
GROUP, VERSION, PLURAL = "dualpath.io", "v1alpha1", "dualpathclusters"
FAKE_TAINT = {"key": "dualpath.io/test-node", "value": "true", "effect": "NoSchedule"}
T = TypeVar("T")


# --- helpers -----------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Operator(OperatorProcess):
    """The operator under test, started: its own identity, and a short lease so a standby
    takes over within seconds."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, name: str) -> None:
        super().__init__(
            kubeconfig=kubeconfig,
            namespaces=[namespace],
            log_path=log_dir / f"{name}.log",
            extra_args=[
                "--identity", name,
                "--lease-namespace", namespace,
                "--lease-duration", "4",
                "--renew-deadline", "3",
                "--retry-period", "0.5",
                "--resync-seconds", "120",
                "--discovery-ttl", "120",
            ],
        )  # fmt: skip
        self.start()

    def metric(self, name: str, labels: str = "") -> float:
        """The series' value; raises when the metric is not exported (renamed: not 0)."""
        return sample_value(self.get("/metrics")[1], name, labels)


class Cluster:
    """Test-side access to the API server for one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, tag: str) -> None:
        self.api = api
        self.ns = namespace
        self.tag = tag  # makes node labels unique to this module's run
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.co = client.CustomObjectsApi(api)

    def raw(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    # DualPathClusters
    def body(self, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        base = {
            "storage": {"model": {"preset": "tiny-test"}},
            "nodes": {
                "prefill": {
                    "nodeSelector": {"dualpath.io/test-pool": f"{self.tag}-prefill"},
                    "tolerations": [{"key": FAKE_TAINT["key"], "operator": "Exists"}],
                },
                "decode": {
                    "nodeSelector": {"dualpath.io/test-pool": f"{self.tag}-decode"},
                    "tolerations": [{"key": FAKE_TAINT["key"], "operator": "Exists"}],
                },
            },
        }
        base.update(spec or {})
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DualPathCluster",
            "metadata": {"name": name},
            "spec": base,
        }

    def create(self, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(
            self.co.create_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, self.body(name, spec)
            )
        )

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.co.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.co.patch_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}
            )
        )

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        status = self.get(name).get("status") or {}
        return {c["type"]: c for c in status.get("conditions", [])}

    def wait_condition(
        self, name: str, ctype: str, status: str, reason: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cr = self.get(name)
            cond = {c["type"]: c for c in (cr.get("status") or {}).get("conditions", [])}.get(ctype)
            gen_ok = (cr.get("status") or {}).get("observedGeneration") == cr["metadata"][
                "generation"
            ]
            if (
                cond
                and gen_ok
                and cond["status"] == status
                and (reason is None or cond["reason"] == reason)
            ):
                return cond
            return None

        return wait_for(f"{name} {ctype}={status} ({reason})", check, timeout)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(
            self.ns,
            field_selector=f"involvedObject.name={name},involvedObject.kind=DualPathCluster",
        ).items
        return [(e.type, e.reason, e.message) for e in items]

    # children
    def daemonset(self, name: str) -> dict[str, Any]:
        return self.raw(self.apps.read_namespaced_daemon_set(name, self.ns))

    def children(self, cluster: str) -> dict[str, str]:
        """kind/name -> uid of every object carrying this cluster's label."""
        selector = f"dualpath.io/cluster={cluster}"
        found = {}
        listers = {
            "ConfigMap": self.core.list_namespaced_config_map,
            "Service": self.core.list_namespaced_service,
            "ServiceAccount": self.core.list_namespaced_service_account,
            "DaemonSet": self.apps.list_namespaced_daemon_set,
            "Deployment": self.apps.list_namespaced_deployment,
            "Role": client.RbacAuthorizationV1Api(self.api).list_namespaced_role,
            "RoleBinding": client.RbacAuthorizationV1Api(self.api).list_namespaced_role_binding,
            "NetworkPolicy": client.NetworkingV1Api(self.api).list_namespaced_network_policy,
        }
        for kind, lister in listers.items():
            for item in lister(self.ns, label_selector=selector).items:
                found[f"{kind}/{item.metadata.name}"] = item.metadata.uid
        # policy/v1beta1 (the v1.20 server's only PDB version) is gone from the typed client.
        pdbs = self.co.list_namespaced_custom_object(
            "policy", "v1beta1", self.ns, "poddisruptionbudgets", label_selector=selector
        )
        for item in pdbs["items"]:
            found[f"PodDisruptionBudget/{item['metadata']['name']}"] = item["metadata"]["uid"]
        return found

    # fake nodes and kubelets
    def create_node(self, name: str, pool: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"dualpath.io/test-pool": pool, "kubernetes.io/hostname": name},
            },
            "spec": {"taints": [FAKE_TAINT]},
        }
        self.core.create_node(body)
        self.heartbeat(name)

    def heartbeat(self, name: str) -> None:
        t = now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "test node",
            "lastHeartbeatTime": t,
            "lastTransitionTime": t,
        }
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "110"}
        self.core.patch_node_status(
            name, {"status": {"conditions": [ready], "capacity": capacity, "allocatable": capacity}}
        )

    def run_pods(self, ready: bool = True, node_for_unbound: str | None = None) -> int:
        """Bind pending pods (the scheduler's job) and set their Ready condition (the
        kubelet's). Returns how many pods were touched."""
        touched = 0
        for pod in self.core.list_namespaced_pod(self.ns).items:
            if pod.metadata.deletion_timestamp:
                continue
            node = pod.spec.node_name
            if not node:
                node = _affinity_node(pod) or node_for_unbound
                if not node:
                    continue
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": pod.metadata.name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                }
                self.core.create_namespaced_binding(self.ns, binding, _preload_content=False)
            flag = "True" if ready else "False"
            t = now()
            self.core.patch_namespaced_pod_status(
                pod.metadata.name,
                self.ns,
                {
                    "status": {
                        "phase": "Running",
                        "startTime": t,
                        "podIP": "10.250.0.1",
                        "conditions": [
                            {"type": c, "status": flag, "lastTransitionTime": t}
                            for c in ("Ready", "ContainersReady")
                        ]
                        + [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t}],
                    }
                },
            )
            touched += 1
        return touched


def _affinity_node(pod: Any) -> str | None:
    """DaemonSet pods name their node in a required node affinity on metadata.name."""
    affinity = pod.spec.affinity
    if not affinity or not affinity.node_affinity:
        return None
    required = affinity.node_affinity.required_during_scheduling_ignored_during_execution
    for term in required.node_selector_terms if required else []:
        for field in term.match_fields or []:
            if field.key == "metadata.name" and field.values:
                return str(field.values[0])
    return None


# --- fixtures ----------------------------------------------------------------------------


def least_privilege_kubeconfig(api: client.ApiClient, admin: Path, ns: str, out: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to exactly OPERATOR_RULES (the rules the
    chart grants), so the tests prove the operator needs nothing more."""
    from dualpath_operator.permissions import OPERATOR_RULES

    core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    name = f"dualpath-operator-{ns}"
    core.create_namespaced_service_account(
        ns, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}}
    )
    rbac_api.create_cluster_role(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": OPERATOR_RULES,
        }
    )
    rbac_api.create_cluster_role_binding(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}],
        }
    )

    def token() -> str | None:
        sa = core.read_namespaced_service_account("operator", ns)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, ns)
            if secret.data and secret.data.get("token"):
                import base64

                return base64.b64decode(secret.data["token"]).decode()
        return None

    admin_cfg = yaml.safe_load(admin.read_text())
    admin_cfg["users"] = [
        {"name": "operator", "user": {"token": wait_for("SA token", token, timeout=30)}}
    ]
    admin_cfg["contexts"][0]["context"]["user"] = "operator"
    out.write_text(yaml.safe_dump(admin_cfg))
    return out


@pytest.fixture(scope="module")
def env(kube, tmp_path_factory) -> Iterator[tuple[Cluster, Operator]]:
    api = kube.api_client()
    ext = client.ApiextensionsV1Api(api)
    install_crd(ext, yaml.safe_load(CRD_FILE.read_text()))
    ns = f"op-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(api, ns, tag=ns)
    log_dir = tmp_path_factory.mktemp("operator-logs")
    kubeconfig = least_privilege_kubeconfig(api, kube.kubeconfig, ns, log_dir / "kubeconfig")
    cluster.operator_kubeconfig = kubeconfig  # type: ignore[attr-defined]
    op = Operator(kubeconfig, ns, log_dir, "op-a")
    extra: list[Operator] = []
    cluster.extra_operators = extra  # type: ignore[attr-defined]
    nodes: list[str] = []
    cluster.nodes = nodes  # type: ignore[attr-defined]
    try:
        wait_for("operator leader and ready", lambda: "leader" in op.readyz(), timeout=60)
        yield cluster, op
    finally:
        tear_down(api, ns, [op, *extra], nodes)


def tear_down(
    api: client.ApiClient, ns: str, operators: list[Operator], nodes: Sequence[str] = ()
) -> None:
    """Stop the operators (their log when one failed) and delete what the test created."""
    for proc in operators:
        rc = proc.stop()
        if os.environ.get("DUALPATH_TEST_VERBOSE") or rc not in (0, -signal.SIGTERM):
            print(f"--- {proc.log_path.name} (rc={rc})\n{proc.log_tail()}")
    core = client.CoreV1Api(api)
    for node in nodes:
        with contextlib.suppress(ApiException):
            core.delete_node(node)
    rbac_api = client.RbacAuthorizationV1Api(api)
    with contextlib.suppress(ApiException):
        rbac_api.delete_cluster_role_binding(f"dualpath-operator-{ns}")
    with contextlib.suppress(ApiException):
        rbac_api.delete_cluster_role(f"dualpath-operator-{ns}")
    with contextlib.suppress(ApiException):
        core.delete_namespace(ns)


# --- schema: accepted and rejected objects -------------------------------------------------


@pytest.mark.parametrize(
    "sample", sorted(SAMPLES.glob("dualpathcluster-*.yaml")), ids=lambda p: p.name
)
def test_samples_are_accepted_and_defaulted_like_the_models(env, sample):
    cluster, _ = env
    body = yaml.safe_load(sample.read_text())
    stored = cluster.co.create_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, PLURAL, body, dry_run="All"
    )
    expected = DualPathClusterSpec.model_validate(body["spec"]).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert stored["spec"] == expected


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"storage": {"model": {"preset": "gpt-5"}}}, "spec.storage.model.preset"),
        (
            {"storage": {"model": {"preset": "tiny-test"}, "blockTokens": 0}},
            "spec.storage.blockTokens",
        ),
        (
            {"storage": {"model": {"preset": "tiny-test"}, "capacity": "lots"}},
            "spec.storage.capacity",
        ),
        (
            {
                "storage": {"model": {"preset": "tiny-test"}},
                "network": {"qos": [{"name": "kv", "purpose": "kvCache", "dscp": 64}]},
            },
            "spec.network.qos.dscp",
        ),
        (
            {
                "storage": {"model": {"preset": "tiny-test"}},
                "trafficController": {"policy": "fastest"},
            },
            "spec.trafficController.policy",
        ),
        ({"network": {}}, "spec.storage"),
        (
            {
                "storage": {"model": {"preset": "tiny-test"}},
                "nodes": {"prefill": {"gpusPerNode": 0}},
            },
            "spec.nodes.prefill.gpusPerNode",
        ),
    ],
)
def test_malformed_specs_are_rejected_naming_the_field(env, spec, field):
    cluster, _ = env
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DualPathCluster",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as err:
        cluster.co.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, body)
    assert err.value.status == 422
    assert field in err.value.body


# --- lifecycle -------------------------------------------------------------------------------

EXPECTED_CHILDREN = {
    "ConfigMap/alpha-config",
    "ConfigMap/alpha-qos-env",
    "Service/alpha-controller",
    "Service/alpha-agents",
    "ServiceAccount/alpha-agent",
    "ServiceAccount/alpha-controller",
    "DaemonSet/alpha-prefill-agent",
    "DaemonSet/alpha-decode-agent",
    "Deployment/alpha-controller",
    "Role/alpha-controller",
    "RoleBinding/alpha-controller",
    "PodDisruptionBudget/alpha-controller",
    "NetworkPolicy/alpha-agents",
    "NetworkPolicy/alpha-controller",
}


def test_create_builds_every_child(env):
    cluster, _ = env
    cluster.create("alpha")

    def all_children() -> dict[str, str] | None:
        found = cluster.children("alpha")
        return found if set(found) >= EXPECTED_CHILDREN else None

    children = wait_for("all children of alpha", all_children, timeout=30)
    assert set(children) == EXPECTED_CHILDREN
    cond = cluster.wait_condition("alpha", "Ready", "False", "NoPrefillNodes")
    assert cond["observedGeneration"] == 1
    status = cluster.get("alpha")["status"]
    assert status["pdbApiVersion"] == "policy/v1beta1"  # v1.20: discovery picked v1beta1
    assert status["controller"]["endpoint"] == f"alpha-controller.{cluster.ns}.svc:50051"

    ds = cluster.daemonset("alpha-prefill-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"dualpath.io/test-pool": f"{cluster.tag}-prefill"}
    container = pod["containers"][0]
    assert container["args"][:5] == ["agent", "--node", "$(NODE_NAME)", "--role", "prefill"]
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert env_vars["UCX_IB_TRAFFIC_CLASS"] == "40" and env_vars["NCCL_IB_TC"] == "104"
    owner = ds["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DualPathCluster", "alpha", True)
    managers = {m["manager"] for m in ds["metadata"]["managedFields"]}
    assert "dualpath-operator" in managers  # server-side apply, our field manager

    config = json.loads(
        cluster.core.read_namespaced_config_map("alpha-config", cluster.ns).data["dualpath.json"]
    )
    assert config["model"]["kvBytesPerToken"] == 4 * 1024
    assert config["trafficController"]["address"] == status["controller"]["endpoint"]
    reasons = [r for _, r, _ in cluster.events("alpha")]
    assert "ChildrenApplied" in reasons


def test_status_follows_daemonset_and_deployment_status(env):
    cluster, _ = env
    for role in ("prefill", "decode"):
        name = f"{cluster.tag}-{role}-1"
        cluster.create_node(name, f"{cluster.tag}-{role}")
        cluster.nodes.append(name)  # type: ignore[attr-defined]
    wait_for(
        "DaemonSet controller placing agents on the test nodes",
        lambda: (
            cluster.daemonset("alpha-prefill-agent").get("status", {}).get("desiredNumberScheduled")
            == 1
            and cluster.daemonset("alpha-decode-agent")
            .get("status", {})
            .get("desiredNumberScheduled")
            == 1
        ),
        timeout=30,
    )
    cluster.wait_condition("alpha", "Ready", "False", "AgentsNotReady")
    # Agents and controller start: the DaemonSet/Deployment controllers update their status.
    wait_for(
        "three pods to run",
        lambda: cluster.run_pods(node_for_unbound=cluster.nodes[0]) >= 3,
        timeout=30,
    )  # type: ignore[attr-defined]
    cond = cluster.wait_condition("alpha", "Ready", "True", "AllComponentsReady")
    assert "prefill agents 1/1 ready" in cond["message"]
    status = cluster.get("alpha")["status"]
    assert status["agents"]["prefill"]["summary"] == "1/1"
    assert status["agents"]["decode"]["ready"] == 1
    assert status["controller"]["ready"] == 1
    assert cluster.conditions("alpha")["Progressing"]["status"] == "False"
    assert ("Normal", "AllComponentsReady") in [(t, r) for t, r, _ in cluster.events("alpha")]
    # An agent turns unready: the cluster follows.
    for node in cluster.nodes:  # type: ignore[attr-defined]
        cluster.heartbeat(node)
    cluster.run_pods(ready=False)
    cluster.wait_condition("alpha", "Ready", "False", "AgentsNotReady")
    assert ("Warning", "AgentsNotReady") in [(t, r) for t, r, _ in cluster.events("alpha")]


def test_spec_change_updates_children_and_rolls_agents(env):
    cluster, _ = env
    before = cluster.daemonset("alpha-prefill-agent")
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["dualpath.io/config-hash"]
    cluster.patch_spec(
        "alpha",
        {"trafficController": {"policy": "dualpath-split", "parameters": {"alphaSeconds": 4}}},
    )

    def rolled() -> dict[str, Any] | None:
        ds = cluster.daemonset("alpha-prefill-agent")
        new = ds["spec"]["template"]["metadata"]["annotations"]["dualpath.io/config-hash"]
        return ds if new != old_hash else None

    after = wait_for("agents' pod template to change", rolled, timeout=30)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    config = json.loads(
        cluster.core.read_namespaced_config_map("alpha-config", cluster.ns).data["dualpath.json"]
    )
    assert config["trafficController"]["policy"] == "dualpath-split"
    assert config["trafficController"]["parameters"]["alphaSeconds"] == 4
    dep = cluster.raw(cluster.apps.read_namespaced_deployment("alpha-controller", cluster.ns))
    assert dep["spec"]["template"]["metadata"]["annotations"]["dualpath.io/config-hash"] != old_hash
    cr = cluster.get("alpha")
    wait_for(
        "status of generation 2",
        lambda: (
            cluster.get("alpha")["status"]["observedGeneration"] == cr["metadata"]["generation"]
        ),
        timeout=30,
    )
    assert (
        cluster.get("alpha")["status"]["configHash"]
        != before["spec"]["template"]["metadata"]["annotations"]["dualpath.io/config-hash"]
    )


def test_network_policies_opt_out_and_back(env):
    cluster, _ = env
    networking = client.NetworkingV1Api(cluster.api)
    ctl = cluster.raw(networking.read_namespaced_network_policy("alpha-controller", cluster.ns))
    grpc = ctl["spec"]["ingress"][0]
    assert grpc["ports"] == [{"protocol": "TCP", "port": 50051}]
    assert grpc["from"] == [{"podSelector": {"matchLabels": {"dualpath.io/cluster": "alpha"}}}]

    def policies() -> set[str]:
        items = networking.list_namespaced_network_policy(
            cluster.ns, label_selector="dualpath.io/cluster=alpha"
        ).items
        return {item.metadata.name for item in items}

    cluster.patch_spec("alpha", {"networkPolicy": {"enabled": False}})
    wait_for("NetworkPolicies to be pruned", lambda: not policies(), timeout=30)
    cluster.patch_spec("alpha", {"networkPolicy": {"enabled": True}})
    wait_for(
        "NetworkPolicies again",
        lambda: policies() == {"alpha-agents", "alpha-controller"},
        timeout=30,
    )


def test_deleted_or_edited_children_are_restored_without_fighting_others(env):
    cluster, _ = env
    uid = cluster.daemonset("alpha-decode-agent")["metadata"]["uid"]
    cluster.apps.delete_namespaced_daemon_set("alpha-decode-agent", cluster.ns)
    wait_for(
        "deleted DaemonSet to come back",
        lambda: cluster.children("alpha").get("DaemonSet/alpha-decode-agent") not in (None, uid),
        timeout=30,
    )
    good = cluster.core.read_namespaced_config_map("alpha-config", cluster.ns).data["dualpath.json"]
    cluster.core.patch_namespaced_config_map(
        "alpha-config", cluster.ns, {"data": {"dualpath.json": "edited"}}
    )
    wait_for(
        "edited ConfigMap to be restored",
        lambda: (
            cluster.core.read_namespaced_config_map("alpha-config", cluster.ns).data[
                "dualpath.json"
            ]
            == good
        ),
        timeout=30,
    )
    # Another writer renumbers a port: the key of the ports list-map changes under us.
    renumber = [{"op": "replace", "path": "/spec/ports/0/port", "value": 51051}]
    cluster.core.patch_namespaced_service("alpha-controller", cluster.ns, renumber)
    wait_for(
        "edited Service ports to be restored",
        lambda: (
            sorted(
                p.port
                for p in cluster.core.read_namespaced_service(
                    "alpha-controller", cluster.ns
                ).spec.ports
            )
            == [9100, 50051]
        ),
        timeout=30,
    )
    # A field the operator does not own (another manager's annotation) is left alone.
    cluster.apps.patch_namespaced_daemon_set(
        "alpha-prefill-agent",
        cluster.ns,
        {"metadata": {"annotations": {"team.example.com/owner": "infra"}}},
    )
    time.sleep(1.0)
    assert (
        cluster.daemonset("alpha-prefill-agent")["metadata"]["annotations"][
            "team.example.com/owner"
        ]
        == "infra"
    )
    assert "DriftCorrected" in [r for _, r, _ in cluster.events("alpha")]


def test_invalid_spec_is_degraded_and_children_stay_untouched(env):
    cluster, _ = env
    before = {
        k: cluster.daemonset(f"alpha-{k}-agent")["metadata"]["resourceVersion"]
        for k in ("prefill", "decode")
    }
    cm_before = cluster.core.read_namespaced_config_map(
        "alpha-config", cluster.ns
    ).metadata.resource_version
    bad_qos = [
        {"name": "kv", "purpose": "kvCache", "dscp": 10, "priority": 1},
        {"name": "coll", "purpose": "collectives", "dscp": 10, "priority": 3, "serviceLevel": 1},
    ]
    cluster.patch_spec("alpha", {"network": {"qos": bad_qos}, "agent": {"logLevel": "debug"}})
    cond = cluster.wait_condition("alpha", "Degraded", "True", "InvalidSpec")
    assert "spec.network.qos[1].dscp" in cond["message"]
    assert cluster.conditions("alpha")["Progressing"]["reason"] == "InvalidSpec"
    time.sleep(1.0)
    after = {
        k: cluster.daemonset(f"alpha-{k}-agent")["metadata"]["resourceVersion"]
        for k in ("prefill", "decode")
    }
    assert after == before
    assert (
        cluster.core.read_namespaced_config_map(
            "alpha-config", cluster.ns
        ).metadata.resource_version
        == cm_before
    )
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in cluster.events("alpha")]
    # Fixing the spec recovers.
    fixed = [dict(bad_qos[0]), {**bad_qos[1], "dscp": 26}]
    cluster.patch_spec("alpha", {"network": {"qos": fixed}})
    cluster.wait_condition("alpha", "Degraded", "False", "AsExpected")
    ds = cluster.daemonset("alpha-prefill-agent")
    env_vars = {
        e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env_vars["DUALPATH_LOG_LEVEL"] == "debug"


def test_network_attachments_follow_the_multus_crd(env):
    cluster, _ = env
    attachments = {
        "attachments": [
            {
                "name": "rdma0",
                "master": "eth9",
                "ipam": {"range": "192.168.50.0/24"},
                "rdmaResource": "rdma/hca",
            }
        ]
    }
    cluster.create("beta", {"network": attachments})
    cond = cluster.wait_condition(
        "beta", "NetworkReady", "False", "NetworkAttachmentDefinitionCRDMissing"
    )
    assert "Multus" in cond["message"]
    # Level-based: a transient apply error (ApplyFailed) is retried with backoff, so wait
    # for the converged reason rather than reading the first status written.
    cluster.wait_condition("beta", "Degraded", "True", "NetworkNotReady")
    # A ServiceMonitor asked for without its CRD: reported, not silently skipped.
    cluster.patch_spec("beta", {"monitoring": {"serviceMonitor": True}})
    cond = cluster.wait_condition("beta", "MonitoringReady", "False", "ServiceMonitorCRDMissing")
    assert "Prometheus Operator" in cond["message"]
    ext = client.ApiextensionsV1Api(cluster.api)
    nad_crd = simple_crd(
        "k8s.cni.cncf.io", "network-attachment-definitions", "NetworkAttachmentDefinition"
    )
    sm_crd = simple_crd("monitoring.coreos.com", "servicemonitors", "ServiceMonitor")
    install_crd(ext, nad_crd)
    install_crd(ext, sm_crd)
    try:
        cluster.wait_condition("beta", "NetworkReady", "True", "AttachmentsApplied")
        cluster.wait_condition("beta", "MonitoringReady", "True", "ServiceMonitorApplied")
        nad = cluster.co.get_namespaced_custom_object(
            "k8s.cni.cncf.io", "v1", cluster.ns, "network-attachment-definitions", "beta-rdma0"
        )
        assert json.loads(nad["spec"]["config"])["master"] == "eth9"
        ds = cluster.daemonset("beta-prefill-agent")
        networks = json.loads(
            ds["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
        )
        assert networks[0]["name"] == "beta-rdma0"
        limits = ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {"rdma/hca": "1"}
        # ServiceMonitor: created when asked (CRD present), pruned when no longer asked.
        cluster.patch_spec("beta", {"monitoring": {"serviceMonitor": True}})
        wait_for(
            "ServiceMonitor beta",
            lambda: cluster.co.get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", cluster.ns, "servicemonitors", "beta"
            ),
            timeout=30,
        )
        cluster.patch_spec(
            "beta", {"monitoring": {"serviceMonitor": False}, "network": {"attachments": []}}
        )

        def pruned() -> bool:
            sms = cluster.co.list_namespaced_custom_object(
                "monitoring.coreos.com", "v1", cluster.ns, "servicemonitors"
            )
            nads = cluster.co.list_namespaced_custom_object(
                "k8s.cni.cncf.io", "v1", cluster.ns, "network-attachment-definitions"
            )
            return not sms["items"] and not nads["items"]

        wait_for("ServiceMonitor and NetworkAttachmentDefinition to be pruned", pruned, timeout=30)
        cluster.wait_condition("beta", "NetworkReady", "True", "NoAttachments")
        cluster.wait_condition("beta", "MonitoringReady", "True", "ServiceMonitorNotRequested")
    finally:
        for crd in (nad_crd, sm_crd):
            with contextlib.suppress(ApiException):
                ext.delete_custom_resource_definition(crd["metadata"]["name"])


ENGINES_SPEC = {
    "image": "localhost/dualpath-engine:test",
    "model": {"generated": "tiny-llama"},
    "prefill": {"instancesPerNode": 1},
    "decode": {"instancesPerNode": 0},  # the decode engine is attached: a pod of our own
}


def _engine_pod_status(cluster: Cluster, name: str, pod_ip: str, host_ip: str, ready: bool) -> None:
    """What the kubelet reports of a running engine (run_pods knows no host IPs)."""
    t = now()
    flag = "True" if ready else "False"
    cluster.core.patch_namespaced_pod_status(
        name,
        cluster.ns,
        {
            "status": {
                "phase": "Running",
                "podIP": pod_ip,
                "hostIP": host_ip,
                "conditions": [
                    {"type": c, "status": flag, "lastTransitionTime": t}
                    for c in ("Ready", "ContainersReady")
                ],
            }
        },
    )


def _engines_file(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    cm = cluster.core.read_namespaced_config_map(f"{name}-engines", cluster.ns)
    return list(yaml.safe_load(cm.data["engines.yaml"])["engines"])


def test_engines_managed_and_attached_feed_the_router_and_the_status(env):
    cluster, _ = env
    nodes = cluster.nodes  # type: ignore[attr-defined]
    prefill_node, decode_node = nodes[0], nodes[1]
    cluster.create("eng", {"engines": ENGINES_SPEC})
    wanted = {
        "ConfigMap/eng-connector",
        "ConfigMap/eng-engines",
        "Deployment/eng-router",
        "Service/eng-router",
        "DaemonSet/eng-prefill-engine-0",
    }
    wait_for("engine children", lambda: wanted <= set(cluster.children("eng")), timeout=30)
    cond = cluster.wait_condition("eng", "EnginesReady", "False", "NoDecodeEngines")
    assert "dualpath.io/engine=decode" in cond["message"]  # says how to attach one
    cond = cluster.wait_condition("eng", "InferencePoolReady", "False", "InferencePoolCRDMissing")
    assert "skipped" in cond["message"]
    # The agents on engine nodes publish their gRPC port on the node for the engines.
    agent = cluster.daemonset("eng-prefill-agent")["spec"]["template"]["spec"]["containers"][0]
    assert any(p.get("hostPort") == 50061 for p in agent["ports"])

    # Attach a decode engine: the documented labels and a port named http, nothing else.
    attached = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "my-decode-engine",
            "labels": {"dualpath.io/cluster": "eng", "dualpath.io/engine": "decode"},
        },
        "spec": {
            "nodeName": decode_node,
            "tolerations": [{"key": FAKE_TAINT["key"], "operator": "Exists"}],
            "containers": [
                {
                    "name": "vllm",
                    "image": "my/vllm:1",
                    "ports": [{"name": "http", "containerPort": 8123}],
                }
            ],
        },
    }
    cluster.core.create_namespaced_pod(cluster.ns, attached)
    for node in nodes:
        cluster.heartbeat(node)
    wait_for(
        "the managed prefill engine pod",
        lambda: (
            cluster.core.list_namespaced_pod(
                cluster.ns, label_selector="dualpath.io/cluster=eng,dualpath.io/engine=prefill"
            ).items
        ),
        timeout=30,
    )
    # Everything runs (agents, controller, router), then the engines report their addresses.
    cluster.run_pods(node_for_unbound=prefill_node)
    managed = cluster.core.list_namespaced_pod(
        cluster.ns, label_selector="dualpath.io/cluster=eng,dualpath.io/engine=prefill"
    ).items[0]
    _engine_pod_status(cluster, managed.metadata.name, "10.250.0.9", "10.250.0.1", ready=True)
    _engine_pod_status(cluster, "my-decode-engine", "10.250.1.5", "10.250.1.1", ready=True)

    def both_listed() -> list[dict[str, Any]] | None:
        entries = _engines_file(cluster, "eng")
        return entries if len(entries) == 2 else None

    entries = {e["role"]: e for e in wait_for("engines file with both", both_listed, timeout=30)}
    assert entries["prefill"] == {
        "id": managed.metadata.name,
        "role": "prefill",
        "url": "http://10.250.0.9:8000",
        "node": managed.spec.node_name,
        "agent": "10.250.0.1:50061",  # its own node's agent
    }
    assert entries["decode"]["url"] == "http://10.250.1.5:8123"
    assert entries["decode"]["agent"] == "10.250.1.1:50061"
    cond = cluster.wait_condition("eng", "EnginesReady", "True", "EnginesReady")
    assert "eng-router" in cond["message"]
    status = cluster.get("eng")["status"]
    assert status["engines"]["prefill"]["summary"] == "1/1"
    assert (status["engines"]["decode"]["summary"], status["engines"]["decode"]["attached"]) == (
        "1/1",
        1,
    )
    cluster.wait_condition("eng", "Ready", "True", "AllComponentsReady")

    # An engine that turns unready leaves the router's file and holds Ready.
    _engine_pod_status(cluster, "my-decode-engine", "10.250.1.5", "10.250.1.1", ready=False)
    wait_for(
        "the unready engine to leave the file", lambda: len(_engines_file(cluster, "eng")) == 1
    )
    cluster.wait_condition("eng", "EnginesReady", "False", "EnginesNotReady")
    cluster.wait_condition("eng", "Ready", "False", "EnginesNotReady")

    # A connector change rolls the managed engines (a new pod template).
    def template_hash() -> str:
        ds = cluster.daemonset("eng-prefill-engine-0")
        return str(ds["spec"]["template"]["metadata"]["annotations"]["dualpath.io/connector-hash"])

    before = template_hash()
    cluster.patch_spec("eng", {"engines": {"loadMode": "async"}})
    wait_for("engines rolled", lambda: template_hash() != before, timeout=30)
    connector = cluster.core.read_namespaced_config_map("eng-connector", cluster.ns)
    assert '"load_mode": "async"' in connector.data["DUALPATH_KV_TRANSFER_CONFIG"]

    # Where the InferencePool CRD is served: the pool and its picker.
    ext = client.ApiextensionsV1Api(cluster.api)
    pool_crd = simple_crd("inference.networking.k8s.io", "inferencepools", "InferencePool")
    # A *.k8s.io group: the API server wants the approval its real CRD carries.
    pool_crd["metadata"]["annotations"] = {
        "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api-inference-extension"
    }
    install_crd(ext, pool_crd)
    try:
        pool = wait_for(
            "InferencePool eng",
            lambda: cluster.co.get_namespaced_custom_object(
                "inference.networking.k8s.io", "v1", cluster.ns, "inferencepools", "eng"
            ),
            timeout=30,
        )
        assert pool["spec"]["endpointPickerRef"]["name"] == "eng-picker"
        wait_for(
            "picker Deployment and Service",
            lambda: {"Deployment/eng-picker", "Service/eng-picker"} <= set(cluster.children("eng")),
            timeout=30,
        )
        cluster.wait_condition("eng", "InferencePoolReady", "False", "PickerNotReady")
    finally:
        with contextlib.suppress(ApiException):
            ext.delete_custom_resource_definition(pool_crd["metadata"]["name"])

    # spec.engines removed: every engine child goes, the agents stay and drop the hostPort.
    cluster.patch_spec("eng", {"engines": None})

    def engines_pruned() -> bool:
        names = set(cluster.children("eng"))
        return not (wanted | {"Deployment/eng-picker", "Service/eng-picker"}) & names and (
            "DaemonSet/eng-prefill-agent" in names
        )

    wait_for("engine children pruned", engines_pruned, timeout=30)
    cluster.wait_condition("eng", "EnginesReady", "True", "NotRequested")
    agent = cluster.daemonset("eng-prefill-agent")["spec"]["template"]["spec"]["containers"][0]
    assert not any(p.get("hostPort") for p in agent["ports"])
    cluster.co.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "eng")
    cluster.core.delete_namespaced_pod("my-decode-engine", cluster.ns)


def test_deleting_the_cluster_garbage_collects_children(env):
    cluster, _ = env
    assert cluster.children("beta")
    cluster.co.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "beta")
    wait_for(
        "children of beta to be garbage-collected", lambda: not cluster.children("beta"), timeout=60
    )


def test_metrics_count_reconciles_and_nothing_loops(env):
    _, op = env
    assert op.metric("dualpath_operator_handler_calls_total", 'handler="reconcile"') > 0
    assert op.metric("dualpath_operator_leader") == 1

    # Quiet world, quiet operator: no reconcile without a change (no hot loop). After an
    # add-on CRD changed (the previous test), clusters are rechecked every second for a few
    # seconds while discovery settles; then nothing.
    def calls() -> float:
        return op.metric("dualpath_operator_handler_calls_total", 'handler="reconcile"')

    def quiet_for(seconds: float) -> float | None:
        before = calls()
        time.sleep(seconds)
        return before if calls() == before else None

    settled = wait_for("reconciles to stop", lambda: quiet_for(2.5), timeout=20)
    time.sleep(2.0)
    assert calls() == settled
    # Every call timed: compared once nothing reconciles (a call in flight is counted
    # before its duration is observed).
    timed = op.metric("dualpath_operator_handler_duration_seconds_count", 'handler="reconcile"')
    assert timed == settled
    assert op.metric("dualpath_operator_throttled_total") == 0


def test_a_standby_replica_takes_over_when_the_leader_stops(env, tmp_path):
    cluster, op = env
    standby = Operator(cluster.operator_kubeconfig, cluster.ns, tmp_path, "op-b")  # type: ignore[attr-defined]
    cluster.extra_operators.append(standby)  # type: ignore[attr-defined]
    wait_for(
        "second replica on standby",
        lambda: "standby (leader: op-a)" in standby.readyz(),
        timeout=60,
    )
    assert standby.metric("dualpath_operator_leader") == 0
    assert op.stop() == 0  # clean shutdown hands the lease over
    wait_for(
        "standby to lead",
        lambda: "leader" in standby.readyz() and "standby" not in standby.readyz(),
        timeout=30,
    )
    cluster.create("gamma")
    wait_for(
        "new leader reconciling",
        lambda: "DaemonSet/gamma-prefill-agent" in cluster.children("gamma"),
        timeout=30,
    )
