"""Child builders: pure functions of the spec and the cluster's capabilities."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dualpath_operator import children
from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.children import (
    configmap,
    daemonset,
    deployment,
    nad,
    pdb,
    rbac,
    service,
    servicemonitor,
)
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.constants import ANNOTATION_CONFIG_HASH, MULTUS_ANNOTATION
from dualpath_operator.discovery import Capabilities

OLD = Capabilities(
    pdb_api_version="policy/v1beta1", network_attachments=False, service_monitors=False
)
NEW = Capabilities(pdb_api_version="policy/v1", network_attachments=True, service_monitors=True)
RDMA = {
    "attachments": [
        {
            "name": "rdma0",
            "master": "ens1f0",
            "interface": "net1",
            "ipam": {"range": "192.168.1.0/24"},
            "rdmaResource": "rdma/rdma_shared_device_a",
        }
    ]
}


def ctx(spec: dict[str, Any] | None = None, caps: Capabilities = OLD) -> ClusterContext:
    raw = {"storage": {"model": {"preset": "tiny-test"}}, **(spec or {})}
    return ClusterContext(
        name="demo",
        namespace="ns1",
        uid="uid-1",
        generation=1,
        spec=DualPathClusterSpec.model_validate(raw),
        capabilities=caps,
    )


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<ref>") for e in container["env"]}


def test_every_child_is_owned_labelled_and_namespaced():
    c = ctx({"network": RDMA, "monitoring": {"serviceMonitor": True}}, caps=NEW)
    objs = [o for kind in children.CHILD_KINDS for o in children.desired(kind, c)]
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == sorted(
        [
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "NetworkAttachmentDefinition",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for o in objs:
        meta = o["metadata"]
        assert meta["namespace"] == "ns1"
        assert meta["ownerReferences"] == [c.owner_reference()]
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "dualpath-operator"
        assert meta["labels"]["dualpath.io/cluster"] == "demo"
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names))


def test_agent_daemonsets_select_their_pools_and_run_dualpath_agent():
    c = ctx(
        {
            "nodes": {
                "prefill": {
                    "nodeSelector": {"pool": "p"},
                    "matchExpressions": [{"key": "gpu", "operator": "Exists"}],
                    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
                "decode": {"nodeSelector": {"pool": "d"}},
            }
        }
    )
    prefill, decode = daemonset.build(c)
    assert prefill["metadata"]["name"] == "demo-prefill-agent"
    p_pod = prefill["spec"]["template"]["spec"]
    assert p_pod["nodeSelector"] == {"pool": "p"}
    assert p_pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    terms = p_pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
    ]
    assert decode["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "d"}
    assert "affinity" not in decode["spec"]["template"]["spec"]
    container = p_pod["containers"][0]
    assert container["command"] == ["dualpath"]
    assert container["args"][:5] == ["agent", "--node", "$(NODE_NAME)", "--role", "prefill"]
    assert env_of(container)["DUALPATH_ROLE"] == "prefill"
    assert env_of(container)["DUALPATH_CONTROLLER_ADDRESS"] == "demo-controller.ns1.svc:50051"
    # The selector is the immutable subset of the pod labels.
    selector = prefill["spec"]["selector"]["matchLabels"]
    labels = prefill["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert selector != decode["spec"]["selector"]["matchLabels"]


def test_agents_get_ipc_lock_and_are_privileged_only_when_asked():
    plain = daemonset.build(ctx())[0]["spec"]["template"]["spec"]["containers"][0]
    sc = plain["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"add": ["IPC_LOCK"], "drop": ["ALL"]}
    # Added capabilities only take effect for uid 0; the image's default user is not root.
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    asked = daemonset.build(ctx({"agent": {"privileged": True}}))[0]
    assert asked["spec"]["template"]["spec"]["containers"][0]["securityContext"] == {
        "privileged": True,
        "runAsUser": 0,
        "runAsNonRoot": False,
        "readOnlyRootFilesystem": True,
    }


def test_qos_env_carries_the_kv_and_collectives_classes():
    c = ctx(
        {
            "network": {
                "qos": [
                    {
                        "name": "kv",
                        "purpose": "kvCache",
                        "dscp": 10,
                        "serviceLevel": 2,
                        "priority": 1,
                    },
                    {
                        "name": "c",
                        "purpose": "collectives",
                        "dscp": 26,
                        "trafficClass": 106,
                        "serviceLevel": 5,
                        "priority": 3,
                    },
                ],
                "gidIndex": 5,
                "tcpFallback": False,
            }
        }
    )
    env = env_of(daemonset.build(c)[0]["spec"]["template"]["spec"]["containers"][0])
    assert env["UCX_IB_TRAFFIC_CLASS"] == "40"  # DSCP 10 << 2
    assert env["UCX_IB_SL"] == "2"
    assert env["UCX_IB_GID_INDEX"] == "5"
    assert env["DUALPATH_KV_DSCP"] == "10"
    assert env["UCX_TLS"] == "^tcp"
    assert env["NCCL_IB_TC"] == "106"
    assert env["NCCL_IB_SL"] == "5"
    assert env["NCCL_IB_GID_INDEX"] == "5"
    qos_cm = configmap.qos_env_config_map(c)
    assert qos_cm["data"]["NCCL_IB_TC"] == "106" and qos_cm["data"]["UCX_IB_SL"] == "2"
    default_env = env_of(daemonset.build(ctx())[0]["spec"]["template"]["spec"]["containers"][0])
    assert "UCX_TLS" not in default_env  # TCP fallback allowed by default


def test_multus_annotation_and_rdma_resources():
    ds = daemonset.build(ctx({"network": RDMA}, caps=NEW))[0]
    template = ds["spec"]["template"]
    networks = json.loads(template["metadata"]["annotations"][MULTUS_ANNOTATION])
    assert networks == [{"name": "demo-rdma0", "namespace": "ns1", "interface": "net1"}]
    limits = template["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"rdma/rdma_shared_device_a": "1"}
    plain = daemonset.build(ctx())[0]["spec"]["template"]
    assert MULTUS_ANNOTATION not in plain["metadata"]["annotations"]
    assert "resources" not in plain["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("storage", "volume"),
    [
        ({}, {"hostPath": {"path": "/var/lib/dualpath/kv", "type": "DirectoryOrCreate"}}),
        (
            {"backend": "sharedFilesystem", "path": "/mnt/3fs"},
            {"hostPath": {"path": "/mnt/3fs", "type": "Directory"}},
        ),
        (
            {"backend": "pvc", "pvc": {"claimName": "kv"}},
            {"persistentVolumeClaim": {"claimName": "kv", "readOnly": False}},
        ),
    ],
)
def test_storage_backends(storage, volume):
    c = ctx({"storage": {"model": {"preset": "tiny-test"}, **storage}})
    pod = daemonset.build(c)[0]["spec"]["template"]["spec"]
    kv = next(v for v in pod["volumes"] if v["name"] == "kv-store")
    assert {k: v for k, v in kv.items() if k != "name"} == volume


def test_config_change_rolls_agents_and_controller_but_cosmetic_rebuild_does_not():
    def hashes(c: ClusterContext) -> tuple[str, str]:
        ds = daemonset.build(c)[0]["spec"]["template"]["metadata"]["annotations"]
        dep = deployment.build(c)[0]["spec"]["template"]["metadata"]["annotations"]
        return ds[ANNOTATION_CONFIG_HASH], dep[ANNOTATION_CONFIG_HASH]

    base = hashes(ctx())
    assert base == hashes(ctx())  # deterministic
    changed = hashes(ctx({"trafficController": {"parameters": {"alphaSeconds": 4}}}))
    assert changed[0] != base[0] and changed[1] != base[1]
    cfg = json.loads(configmap.config_map(ctx())["data"]["dualpath.json"])
    assert cfg["model"]["kvBytesPerToken"] == 4 * 1024
    assert cfg["model"]["blockBytes"] == 4 * 1024 * 64
    assert cfg["trafficController"]["policy"] == "paper"
    assert cfg["network"]["kvCache"]["trafficClass"] == 40


def test_controller_deployment_and_services():
    c = ctx({"trafficController": {"replicas": 3, "policy": "round-robin", "tlsSecretName": "tls"}})
    dep = deployment.build(c)[0]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-controller"
    assert pod["containers"][0]["args"][:1] == ["controller"]
    assert {
        "name": "mtls",
        "secret": {"secretName": "demo-controller-tls", "defaultMode": 0o440},
    } in pod["volumes"]
    assert "podAntiAffinity" in pod["affinity"]
    ctl_svc, agents_svc = service.build(c)
    assert ctl_svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in ctl_svc["spec"]["ports"]] == [50051, 9100]
    assert agents_svc["spec"]["clusterIP"] == "None"
    no_metrics = service.build(ctx({"monitoring": {"metrics": False}}))[0]
    assert [p["name"] for p in no_metrics["spec"]["ports"]] == ["grpc"]


def test_mutual_tls_replaces_the_controllers_server_only_tls():
    """Every pod mounts its role's identity Secret and passes --tls-dir; a tlsSecretName
    no longer changes the pods (mutual TLS replaces it; status says so)."""
    for spec in ({}, {"trafficController": {"tlsSecretName": "ctl-tls"}}):
        c = ctx(spec)
        ctl = deployment.build(c)[0]["spec"]["template"]["spec"]
        args = ctl["containers"][0]["args"]
        assert args[args.index("--tls-dir") + 1] == "/etc/dualpath-mtls"
        assert "--tls-cert-file" not in args and "--insecure" not in args
        assert {"name": "mtls", "mountPath": "/etc/dualpath-mtls", "readOnly": True} in ctl[
            "containers"
        ][0]["volumeMounts"]
        assert {
            "name": "mtls",
            "secret": {"secretName": "demo-controller-tls", "defaultMode": 0o440},
        } in ctl["volumes"]
        for ds in daemonset.build(c):
            pod = ds["spec"]["template"]["spec"]
            agent_args = pod["containers"][0]["args"]
            assert agent_args[agent_args.index("--tls-dir") + 1] == "/etc/dualpath-mtls"
            assert "--controller-tls-ca" not in agent_args and "--insecure" not in agent_args
            (volume,) = [v for v in pod["volumes"] if v["name"] == "mtls"]
            assert volume["secret"] == {"secretName": "demo-agent-tls", "defaultMode": 0o440}
            assert not any("ctl-tls" in json.dumps(v) for v in pod["volumes"])


def test_rbac_is_least_privilege():
    c = ctx()
    agent_sa, controller_sa = rbac.service_accounts(c)
    assert agent_sa["automountServiceAccountToken"] is False
    role = rbac.controller_role(c)
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs <= {"get", "list", "watch"}
    assert all("*" not in rule["resources"] for rule in role["rules"])
    cm_rule = next(r for r in role["rules"] if r["resources"] == ["configmaps"])
    assert cm_rule["resourceNames"] == ["demo-config"]
    binding = rbac.controller_role_binding(c)
    assert binding["subjects"][0]["name"] == controller_sa["metadata"]["name"]


@pytest.mark.parametrize("caps", [OLD, NEW], ids=["policy-v1beta1", "policy-v1"])
def test_pdb_uses_the_discovered_api_version(caps):
    c = ctx(caps=caps)
    (budget,) = pdb.build(c)
    assert budget["apiVersion"] == caps.pdb_api_version
    assert (
        pdb.resource_for(caps).path("ns1")
        == f"/apis/{caps.pdb_api_version}/namespaces/ns1/poddisruptionbudgets"
    )
    assert budget["spec"]["maxUnavailable"] == 1
    off = ctx({"trafficController": {"podDisruptionBudget": {"enabled": False}}}, caps=caps)
    assert pdb.build(off) == []


def test_no_pdb_api_means_no_pdb():
    caps = Capabilities(pdb_api_version="", network_attachments=False, service_monitors=False)
    assert pdb.resource_for(caps) is None
    assert children.desired(pdb.KIND, ctx(caps=caps)) == []


def test_network_attachment_definitions_only_when_the_crd_exists():
    assert nad.build(ctx({"network": RDMA}, caps=OLD)) == []
    (definition,) = nad.build(ctx({"network": RDMA}, caps=NEW))
    assert definition["metadata"]["name"] == "demo-rdma0"
    assert definition["metadata"]["annotations"] == {
        "k8s.v1.cni.cncf.io/resourceName": "rdma/rdma_shared_device_a"
    }
    config = json.loads(definition["spec"]["config"])
    assert config == {
        "cniVersion": "0.3.1",
        "name": "demo-rdma0",
        "type": "macvlan",
        "master": "ens1f0",
        "mode": "bridge",
        "ipam": {"type": "whereabouts", "range": "192.168.1.0/24"},
    }


def test_service_monitor_needs_the_crd_and_the_request():
    asked = {"monitoring": {"serviceMonitor": True, "serviceMonitorLabels": {"release": "prom"}}}
    assert servicemonitor.build(ctx(asked, caps=OLD)) == []
    assert servicemonitor.build(ctx(caps=NEW)) == []
    (monitor,) = servicemonitor.build(ctx(asked, caps=NEW))
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"]
    for svc in service.build(ctx(asked, caps=NEW)):
        assert selected.items() <= svc["metadata"]["labels"].items()


def _expand(args: list[str]) -> list[str]:
    values = {"$(NODE_NAME)": "node-a", "$(POD_IP)": "10.1.2.3"}
    out = []
    for arg in args:
        for var, value in values.items():
            arg = arg.replace(var, value)
        out.append(arg)
    return out


def test_agent_args_parse_with_the_real_agent_cli():
    import argparse

    from dualpath_agent import cli as agent_cli

    c = ctx(
        {
            "storage": {"model": {"preset": "tiny-test"}, "readBandwidthCapGbps": 8},
            "agent": {"gpuMemoryBudget": "1Gi", "logLevel": "debug"},
            "nodes": {"prefill": {"gpusPerNode": 2}},
        }
    )
    container = daemonset.build(c)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["dualpath"]
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    args = parser.parse_args(_expand(container["args"])[1:])
    assert (args.node, args.role, args.listen) == ("node-a", "prefill", "10.1.2.3:50061")
    assert args.controller == "demo-controller.ns1.svc:50051"
    assert args.buffer_bytes == 2 << 30 and args.device_bytes == 1 << 30
    assert args.capacity == 100 << 30 and args.snic_read_gbps == 8
    assert (args.traffic_class, args.service_level, args.dscp) == (40, 0, 10)
    assert args.engine == ["node-a-gpu0", "node-a-gpu1"]
    assert args.metrics_port == 9101


@pytest.mark.parametrize("policy", ["paper", "prefill-only", "round-robin", "dualpath-split"])
def test_controller_args_parse_with_the_real_controller_cli(policy):
    import argparse

    from dualpath_controller import cli as controller_cli
    from dualpath_controller.policy.registry import get_policy, parse_policy_params

    c = ctx(
        {
            "trafficController": {
                "policy": policy,
                "parameters": {"prefillTokensPerSecond": 200000, "engineTimeoutSeconds": 7},
            }
        }
    )
    container = deployment.build(c)[0]["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    controller_cli.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    assert (args.listen, args.metrics_host, args.metrics_port) == ("0.0.0.0:50051", "0.0.0.0", 9100)
    assert args.policy == policy and args.liveness_timeout_s == 7
    params = parse_policy_params(args.policy_param)
    get_policy(policy, **params)  # the controller accepts every parameter we pass
    if "alpha" in params:
        # tokens one 400 Gbit/s storage NIC reads in 3 s, at tiny-test's 4 KiB per token
        assert int(params["alpha"]) == int(50e9 * 3 / 4096)
    assert params["beta"] == str(200000 * 5)


def test_policy_enum_matches_the_controllers_registry():
    from dualpath_controller.policy.registry import describe_policies
    from dualpath_operator.api import TrafficControllerSpec

    schema = TrafficControllerSpec.model_json_schema(by_alias=True)
    assert sorted(schema["properties"]["policy"]["enum"]) == sorted(describe_policies())


def test_the_operator_holds_every_permission_it_uses_and_grants():
    from dualpath_operator.permissions import allows

    everything = Capabilities(
        pdb_api_version="policy/v1",
        network_attachments=True,
        service_monitors=True,
        cert_manager=True,
        inference_pools=True,
    )
    for caps in (OLD, NEW, everything):
        for kind in children.CHILD_KINDS:
            rt = kind.resource(caps)
            if rt is None:
                continue
            for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
                assert allows(rt.group, rt.plural, verb), (rt, verb)
    # RBAC forbids granting what one does not hold: the controller's Role is a subset.
    for rule in rbac.controller_role(ctx())["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert allows(group, resource, verb), (group, resource, verb)
    assert allows("coordination.k8s.io", "leases", "update")
    assert allows("dualpath.io", "dualpathclusters/status", "patch")
