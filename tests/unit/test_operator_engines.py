"""spec.engines: the engine DaemonSets, the connector and engines ConfigMaps, the router,
the InferencePool with its picker, the agents' hostPort, validation and status.

Where another component reads what the operator writes (the connector's settings, the
router's engines file and command line), the test hands it to that component's own parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dualpath_cli.main import build_parser
from dualpath_operator import children
from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.children import (
    daemonset,
    engines,
    engines_config,
    inferencepool,
    router,
)
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.constants import LABEL_CLUSTER, LABEL_COMPONENT, LABEL_ENGINE
from dualpath_operator.discovery import Capabilities, capabilities_from_groups
from dualpath_operator.engine_pods import (
    EnginePod,
    engine_cluster,
    observe_engine_pod,
    observe_engine_pods,
)
from dualpath_operator.status import (
    EnginesState,
    Observation,
    Rollout,
    compute_status,
    engines_condition,
    inference_pool_condition,
)
from dualpath_operator.validation import parse_spec
from dualpath_router.config import engines_from_file
from dualpath_vllm.config import ConnectorConfig

CAPS = Capabilities(pdb_api_version="policy/v1", network_attachments=False, service_monitors=False)
WITH_POOLS = Capabilities(
    pdb_api_version="policy/v1",
    network_attachments=False,
    service_monitors=False,
    inference_pools=True,
)
ENGINES: dict[str, Any] = {
    "image": "localhost/dualpath-engine:dev",
    "model": {"generated": "tiny-llama"},
    "extraArgs": ["--enforce-eager"],
    "prefill": {"instancesPerNode": 2, "extraArgs": ["--max-num-seqs", "8"]},
    "decode": {"instancesPerNode": 1, "resources": {"limits": {"nvidia.com/gpu": 1}}},
}


def ctx(
    engines_spec: dict[str, Any] | None = ENGINES,
    caps: Capabilities = CAPS,
    pods: tuple[EnginePod, ...] = (),
    **spec: Any,
) -> ClusterContext:
    raw: dict[str, Any] = {"storage": {"model": {"preset": "tiny-test"}, "blockTokens": 32}}
    if engines_spec is not None:
        raw["engines"] = engines_spec
    raw.update(spec)
    return ClusterContext(
        name="demo",
        namespace="ns1",
        uid="uid-1",
        generation=1,
        spec=DualPathClusterSpec.model_validate(raw),
        capabilities=caps,
        engine_pods=pods,
    )


def engine_pod(name: str, role: str, ready: bool = True, managed: bool = True) -> EnginePod:
    return EnginePod(
        name=name,
        role=role,
        managed=managed,
        ready=ready,
        pod_ip=f"10.244.0.{len(name)}",
        port=8000,
        node=f"node-{role}",
        host_ip="10.244.0.1" if role == "prefill" else "10.244.1.1",
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- engine DaemonSets -----------------------------------------------------------------


def test_one_daemonset_per_role_and_instance_on_the_roles_nodes():
    c = ctx()
    built = engines.build(c)
    names = [d["metadata"]["name"] for d in built]
    assert names == [
        "demo-prefill-engine-0",
        "demo-prefill-engine-1",
        "demo-decode-engine-0",
    ]
    for ds in built:
        role = ds["metadata"]["labels"][LABEL_ENGINE]
        template = ds["spec"]["template"]
        assert template["metadata"]["labels"][LABEL_ENGINE] == role
        assert template["metadata"]["labels"][LABEL_CLUSTER] == "demo"
        assert (
            ds["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )
        pool = c.spec.nodes.prefill if role == "prefill" else c.spec.nodes.decode
        assert template["spec"]["nodeSelector"] == pool.node_selector
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True) for d in built]
    assert len(set(selectors)) == len(selectors), "two DaemonSets would fight over pods"


def test_no_engines_without_spec_engines_or_with_zero_instances():
    assert engines.build(ctx(None)) == []
    none = {**ENGINES, "prefill": {"instancesPerNode": 0}, "decode": {"instancesPerNode": 0}}
    assert engines.build(ctx(none)) == []


def test_engine_container_reaches_its_own_nodes_agent_through_the_connector_configmap():
    c = ctx()
    ds = engines.engine_daemonset(c, "prefill", 0)
    container = ds["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--kv-transfer-config") + 1] == "$(DUALPATH_KV_TRANSFER_CONFIG)"
    assert args[args.index("--block-size") + 1] == "32"  # the store's block size
    assert args[args.index("--served-model-name") + 1] == c.served_model_name == "tiny-llama"
    assert args[-3:] == ["--enforce-eager", "--max-num-seqs", "8"]
    assert container["envFrom"] == [{"configMapRef": {"name": "demo-connector"}}]
    env = env_of(container)
    assert env["DUALPATH_HOST_IP"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "status.hostIP"}
    }
    assert env["DUALPATH_ENGINE_ID"]["fieldRef"]["fieldPath"] == "metadata.name"
    # What the kubelet would give this container, handed to the connector's own parser.
    connector_env = engines_config.connector_env(c)
    kv = json.loads(connector_env["DUALPATH_KV_TRANSFER_CONFIG"])
    assert kv["kv_connector"] == "DualPathConnector"
    extra = kv["kv_connector_extra_config"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert extra["tls_dir"] in mounts  # the engine identity the pod mounts
    # The parser reads the identity at once: this machine has none at that path.
    extra = {**extra, "tls_dir": "", "insecure": True}
    parsed = ConnectorConfig.from_extra(
        extra,
        default_namespace="unused",
        environ={"DUALPATH_HOST_IP": "10.244.1.1", "DUALPATH_ENGINE_ID": "demo-prefill-x"},
    )
    assert parsed.agent_endpoint == f"10.244.1.1:{c.spec.agent.grpc_port}"
    assert parsed.engine_id == "demo-prefill-x"
    assert parsed.hash_namespace == c.served_model_name


def test_connector_change_rolls_engines_but_an_agent_only_change_does_not():
    base = engines.engine_daemonset(ctx(), "decode", 0)["spec"]["template"]
    load_mode = {**ENGINES, "loadMode": "async"}
    assert engines.engine_daemonset(ctx(load_mode), "decode", 0)["spec"]["template"] != base
    agent_only = ctx(agent={"hostBuffer": "2Gi"})
    assert engines.engine_daemonset(agent_only, "decode", 0)["spec"]["template"] == base


@pytest.mark.parametrize(
    ("model", "volume_key", "init"),
    [
        ({"generated": "tiny-llama"}, "emptyDir", True),
        ({"pvc": {"claimName": "weights"}, "path": "llama-3-8b"}, "persistentVolumeClaim", False),
        ({"hostPath": "/data/models"}, "hostPath", False),
    ],
)
def test_model_sources(model: dict[str, Any], volume_key: str, init: bool):
    c = ctx({**ENGINES, "model": model})
    pod = engines.engine_daemonset(c, "prefill", 0)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume_key in volume
    assert ("initContainers" in pod) == init
    args = pod["containers"][0]["args"]
    if init:
        assert pod["initContainers"][0]["command"][-1] == args[args.index("--model") + 1]
    if "path" in model:
        assert args[args.index("--model") + 1] == "/models/llama-3-8b"
        assert c.served_model_name == "llama-3-8b"


def test_gpus_go_into_the_engine_resources():
    pod = engines.engine_daemonset(ctx(), "decode", 0)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}


# --- agents beside engines ---------------------------------------------------------------


def test_agents_get_a_host_port_and_stop_registering_placeholder_engines_with_spec_engines():
    nodes = {"prefill": {"gpusPerNode": 2}}
    plain = daemonset.agent_daemonset(ctx(None, nodes=nodes), "prefill")
    with_engines = daemonset.agent_daemonset(ctx(nodes=nodes), "prefill")

    def grpc(ds: dict[str, Any]) -> dict[str, Any]:
        ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        return next(p for p in ports if p["name"] == "grpc")

    assert "hostPort" not in grpc(plain)
    assert grpc(with_engines)["hostPort"] == grpc(with_engines)["containerPort"]
    assert plain["spec"]["template"]["spec"]["containers"][0]["args"].count("--engine") == 2
    engine_args = with_engines["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--engine" not in engine_args and "--no-engines" in engine_args
    # What `dualpath agent` accepts: the operator's args parse with the agent's own parser.
    parsed = build_parser(engine_args).parse_args(engine_args)
    assert parsed.no_engines and parsed.engine == []
    host_net = daemonset.agent_daemonset(ctx(agent={"hostNetwork": True}), "prefill")
    assert "hostPort" not in grpc(host_net)  # the pod IP is the node's already


# --- the router and its engines file ----------------------------------------------------


def test_engines_file_lists_ready_engines_in_the_routers_format(tmp_path: Path):
    pods = (
        engine_pod("demo-prefill-engine-0-abcde", "prefill"),
        engine_pod("demo-decode-engine-0-fghij", "decode"),
        engine_pod("mine-decode-1", "decode", managed=False),
        engine_pod("starting", "prefill", ready=False),
    )
    c = ctx(pods=pods)
    cm = engines_config.engines_config_map(c)
    text = cm["data"]["engines.yaml"]
    specs = engines_from_file(tmp_path / "engines.yaml", text)  # the router's own parser
    assert [s.id for s in specs] == [
        "demo-prefill-engine-0-abcde",
        "demo-decode-engine-0-fghij",
        "mine-decode-1",
    ]
    prefill = specs[0]
    assert prefill.url == f"http://{pods[0].pod_ip}:8000"
    assert prefill.agent == f"10.244.0.1:{c.spec.agent.grpc_port}"  # its own node's agent
    assert specs[1].agent.startswith("10.244.1.1:")
    empty = engines_config.engines_config_map(ctx())["data"]["engines.yaml"]
    assert engines_from_file(tmp_path / "e.yaml", empty) == ()


def test_router_command_line_is_what_dualpath_router_accepts():
    c = ctx()
    dep = router.router_deployment(c)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    argv = container["args"]
    args = build_parser(argv).parse_args(argv)
    assert args.engines_file == Path("/etc/dualpath-engines/engines.yaml")
    assert args.hash_namespace == c.served_model_name
    assert args.block_tokens == 32
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/dualpath-engines" in mounts and "/etc/dualpath-mtls" in mounts
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["engines"]["configMap"]["name"] == "demo-engines"
    assert volumes["mtls"]["secret"]["secretName"] == "demo-router-tls"
    svc = router.router_service(c)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert c.router_endpoint == "http://demo-router.ns1.svc:8000"


def test_engines_children_exist_only_with_spec_engines():
    def names(c: ClusterContext) -> set[str]:
        return {
            f"{o['kind']}/{o['metadata']['name']}"
            for kind in children.CHILD_KINDS
            for o in children.desired(kind, c)
        }

    added = names(ctx()) - names(ctx(None))
    assert added == {
        "ConfigMap/demo-connector",
        "ConfigMap/demo-engines",
        "Service/demo-router",
        "Deployment/demo-router",
        "DaemonSet/demo-prefill-engine-0",
        "DaemonSet/demo-prefill-engine-1",
        "DaemonSet/demo-decode-engine-0",
    }
    with_pool = names(ctx(caps=WITH_POOLS)) - names(ctx())
    assert with_pool == {"InferencePool/demo", "Deployment/demo-picker", "Service/demo-picker"}


def test_pruning_is_scoped_to_the_kinds_component():
    """Agent and engine DaemonSets share a resource: pruning engines must not see agents."""
    c = ctx()
    assert children.child_selector(c, engines.KIND.component).endswith(f",{LABEL_COMPONENT}=engine")
    for kind in (engines.KIND, router.DEPLOYMENT_KIND, inferencepool.DEPLOYMENT_KIND):
        assert kind.prune and kind.component
        for obj in kind.build(ctx(caps=WITH_POOLS)):
            assert obj["metadata"]["labels"][LABEL_COMPONENT] == kind.component


# --- InferencePool ------------------------------------------------------------------------


def test_inference_pool_selects_prefill_engines_and_names_the_picker_service():
    c = ctx(caps=WITH_POOLS)
    pool = inferencepool.inference_pool(c)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"] == {
        LABEL_CLUSTER: "demo",
        LABEL_ENGINE: "prefill",
    }
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    ref = pool["spec"]["endpointPickerRef"]
    svc = inferencepool.picker_service(c)
    assert ref["name"] == svc["metadata"]["name"] == "demo-picker"
    assert ref["port"]["number"] == svc["spec"]["ports"][0]["port"] == 9002
    assert ref["failureMode"] == "FailClose"
    # Attached prefill engines carry the same two labels, so the pool picks them up too.
    assert (
        pool["spec"]["selector"]["matchLabels"].items()
        <= {
            LABEL_CLUSTER: "demo",
            LABEL_ENGINE: "prefill",
            "app": "mine",
        }.items()
    )


def test_inference_pool_capability_from_discovery():
    groups = {"groups": [{"name": "inference.networking.k8s.io", "versions": [{"version": "v1"}]}]}
    assert capabilities_from_groups(groups).inference_pools
    assert not capabilities_from_groups(
        groups, {"inference.networking.k8s.io/v1": set()}
    ).inference_pools
    assert not capabilities_from_groups({"groups": []}).inference_pools


# --- engine pods as observed ----------------------------------------------------------------


def pod_obj(role: str = "decode", ready: bool = True, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {
            "name": "mine-0",
            "namespace": "ns1",
            "labels": {LABEL_CLUSTER: "demo", LABEL_ENGINE: role},
            **extra.get("metadata", {}),
        },
        "spec": {
            "nodeName": "node-b",
            "containers": [{"name": "vllm", "ports": [{"name": "http", "containerPort": 8123}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.244.1.7",
            "hostIP": "10.244.1.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
    return obj


def test_an_attached_pod_is_read_like_a_managed_one():
    engine = observe_engine_pod(pod_obj(), default_port=8000)
    assert engine == EnginePod(
        name="mine-0",
        role="decode",
        managed=False,
        ready=True,
        pod_ip="10.244.1.7",
        port=8123,
        node="node-b",
        host_ip="10.244.1.1",
    )
    annotated = pod_obj(metadata={"annotations": {"dualpath.io/engine-port": "9000"}})
    assert observe_engine_pod(annotated, 8000).port == 9000  # type: ignore[union-attr]
    # A bad annotation is not guessed around: the pod is not served, and status says why.
    bad = observe_engine_pod(
        pod_obj(metadata={"annotations": {"dualpath.io/engine-port": "http"}}), 8000
    )
    assert bad is not None and not bad.ready and "dualpath.io/engine-port" in bad.problem
    state = EnginesState(
        prefill=ONE, router=ONE, pods=(engine_pod("p", "prefill"), bad), decode=Rollout()
    )
    cond = engines_condition(ready_obs(state))
    assert cond.reason == "EnginePodMisconfigured" and "mine-0" in cond.message
    assert not observe_engine_pod(pod_obj(ready=False), 8000).ready  # type: ignore[union-attr]
    deleting = pod_obj(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    assert not observe_engine_pod(deleting, 8000).ready  # type: ignore[union-attr]
    assert engine_cluster(pod_obj(role="both")) is None
    assert observe_engine_pods([pod_obj(role="both"), pod_obj()], 8000)[0].name == "mine-0"


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engines_spec", "field", "words"),
    [
        ({"prefill": {"instancesPerNode": 1}}, "spec.engines.image", "required"),
        ({"image": "x"}, "spec.engines.model", "required"),
        (
            {"image": "x", "model": {"generated": "tiny-llama", "hostPath": "/m"}},
            "spec.engines.model",
            "exactly one",
        ),
        ({"image": "x", "model": {}}, "spec.engines.model", "exactly one"),
        (
            {"image": "x", "model": {"hostPath": "/m"}, "extraArgs": ["--port=9"]},
            "spec.engines.extraArgs[0]",
            "spec.engines.port",
        ),
        (
            {
                "image": "x",
                "model": {"hostPath": "/m"},
                "decode": {"extraArgs": ["--block-size", "16"]},
            },
            "spec.engines.decode.extraArgs[0]",
            "blockTokens",
        ),
        (
            {"image": "x", "model": {"hostPath": "/m"}, "extraEnv": [{"name": "DUALPATH_HOST_IP"}]},
            "spec.engines.extraEnv[0].name",
            "set by the operator",
        ),
        (
            {"image": "x", "model": {"hostPath": "/m"}, "picker": {"metricsPort": 9002}},
            "spec.engines.picker.metricsPort",
            "differ",
        ),
        (
            {
                "image": "x",
                "model": {"hostPath": "/m"},
                "router": {"resources": {"limits": {"cpu": "lots"}}},
            },
            "spec.engines.router.resources.limits.cpu",
            "",
        ),
    ],
)
def test_engines_rules_name_the_field(engines_spec: dict[str, Any], field: str, words: str):
    raw = {"storage": {"model": {"preset": "tiny-test"}}, "engines": engines_spec}
    spec, problems = parse_spec(raw)
    assert spec is not None
    matching = [p for p in problems if p.field == field]
    assert matching, [str(p) for p in problems]
    assert words in matching[0].message


def test_attach_only_needs_neither_image_nor_model():
    raw = {
        "storage": {"model": {"preset": "tiny-test"}},
        "engines": {"prefill": {"instancesPerNode": 0}, "decode": {"instancesPerNode": 0}},
    }
    spec, problems = parse_spec(raw)
    assert spec is not None and problems == []


def test_schema_rejects_an_unknown_generated_model():
    raw = {
        "storage": {"model": {"preset": "tiny-test"}},
        "engines": {"model": {"generated": "gpt"}},
    }
    spec, problems = parse_spec(raw)
    assert spec is None and problems[0].field == "spec.engines.model.generated"


# --- status ---------------------------------------------------------------------------------


def ready_obs(engines_state: EnginesState | None) -> Observation:
    ok = Rollout(desired=1, ready=1, updated=1, available=1, complete=True, exists=True)
    return Observation(
        generation=2, prefill=ok, decode=ok, controller=ok, network=None, engines=engines_state
    )


ONE = Rollout(desired=1, ready=1, updated=1, available=1, complete=True, exists=True)


def test_engines_ready_counts_managed_and_attached_per_role():
    state = EnginesState(
        prefill=ONE,
        decode=Rollout(complete=True),  # no managed decode engine
        pods=(engine_pod("p", "prefill"), engine_pod("mine", "decode", managed=False)),
        router=ONE,
        router_endpoint="http://demo-router.ns1.svc:8000",
    )
    cond = engines_condition(ready_obs(state))
    assert (cond.status, cond.reason) == ("True", "EnginesReady")
    status = compute_status(None, ready_obs(state), "T")
    assert status.engines is not None
    assert (status.engines.decode.desired, status.engines.decode.attached) == (1, 1)
    assert status.engines.prefill.summary == "1/1"


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (
            EnginesState(prefill=ONE, router=ONE, pods=(engine_pod("p", "prefill"),)),
            "NoDecodeEngines",
        ),
        (
            EnginesState(
                prefill=ONE,
                decode=ONE,
                router=ONE,
                pods=(engine_pod("p", "prefill"), engine_pod("d", "decode", ready=False)),
            ),
            "EnginesNotReady",
        ),
        (
            EnginesState(
                prefill=ONE,
                decode=ONE,
                router=Rollout(desired=1, exists=True),
                pods=(engine_pod("p", "prefill"), engine_pod("d", "decode")),
            ),
            "RouterNotReady",
        ),
    ],
)
def test_engines_not_ready_holds_ready_false(state: EnginesState, reason: str):
    status = compute_status(None, ready_obs(state), "T")
    by_type = {c.type: c for c in status.conditions}
    assert (by_type["EnginesReady"].status, by_type["EnginesReady"].reason) == ("False", reason)
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ("False", reason)
    assert by_type["Degraded"].status == "False"  # waiting is not a fault


def test_a_missing_inference_pool_crd_is_reported_as_skipped_without_blocking_ready():
    state = EnginesState(
        prefill=ONE,
        decode=ONE,
        router=ONE,
        router_endpoint="http://demo-router.ns1.svc:8000",
        pods=(engine_pod("p", "prefill"), engine_pod("d", "decode")),
    )
    cond = inference_pool_condition(ready_obs(state))
    assert (cond.status, cond.reason) == ("False", "InferencePoolCRDMissing")
    assert "skipped" in cond.message and "demo-router" in cond.message
    by_type = {c.type: c for c in compute_status(None, ready_obs(state), "T").conditions}
    assert by_type["Ready"].status == "True"
    served = EnginesState(**{**state.__dict__, "inference_pools_served": True, "picker": ONE})
    assert inference_pool_condition(ready_obs(served)).reason == "InferencePoolApplied"
    waiting = EnginesState(**{**state.__dict__, "inference_pools_served": True})
    assert inference_pool_condition(ready_obs(waiting)).reason == "PickerNotReady"


def test_connector_names_an_unset_variable_rather_than_dialling_a_literal():
    extra = {"agent_endpoint": "${DUALPATH_HOST_IP}:50061", "insecure": True}
    with pytest.raises(ValueError, match=r"agent_endpoint.*DUALPATH_HOST_IP.*not set"):
        ConnectorConfig.from_extra(extra, default_namespace="m", environ={})
    plain = ConnectorConfig.from_extra(
        {"agent_endpoint": "127.0.0.1:7001", "insecure": True}, default_namespace="m", environ={}
    )
    assert plain.agent_endpoint == "127.0.0.1:7001"


# --- the samples: attach mode's documented convention is the one the operator reads --------

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def sample_ctx() -> ClusterContext:
    import yaml

    obj = yaml.safe_load((SAMPLES / "dualpathcluster-engines.yaml").read_text())
    spec, problems = parse_spec(obj["spec"])
    assert spec is not None and problems == [], problems
    return ClusterContext(
        name=obj["metadata"]["name"],
        namespace="ns1",
        uid="u",
        generation=1,
        spec=spec,
        capabilities=CAPS,
    )


def test_the_attached_engine_sample_follows_the_convention_the_operator_reads():
    import yaml
    from dualpath_operator.mtls import MTLS_MOUNT_DIR, leaf_secret_name

    c = sample_ctx()
    deployment = yaml.safe_load((SAMPLES / "attached-engine.yaml").read_text())
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert engine_cluster({"metadata": {"namespace": "ns1", **template["metadata"]}}) == (
        "ns1",
        c.name,
    )
    assert container["envFrom"] == [{"configMapRef": {"name": c.connector_config_map_name}}]
    args = container["args"]
    kv = args[args.index("--kv-transfer-config") + 1]
    assert kv == f"$({engines_config.KV_TRANSFER_CONFIG_VAR})"
    assert f"--block-size={c.spec.storage.block_tokens}" in args
    assert f"--served-model-name={c.served_model_name}" in args
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        engines_config.HOST_IP_VAR: "status.hostIP",
        engines_config.ENGINE_ID_VAR: "metadata.name",
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {
        v["name"]: v.get("secret", {}).get("secretName") for v in template["spec"]["volumes"]
    }
    assert mounts["mtls"] == MTLS_MOUNT_DIR
    assert secrets["mtls"] == leaf_secret_name(c.name, "engine")
    pod = {
        "metadata": {"name": "x", "namespace": "ns1", **template["metadata"]},
        "spec": template["spec"],
        "status": {},
    }
    engine = observe_engine_pod(pod, default_port=1)
    assert engine is not None and (engine.role, engine.port, engine.managed) == (
        "decode",
        8000,
        False,
    )
    # A managed engine of the same cluster imports the very same variables.
    managed = engines.engine_container(c, "decode")
    assert managed["envFrom"] == container["envFrom"]
    assert {e["name"] for e in managed["env"]} >= set(env)


def test_the_engines_sample_runs_one_engine_per_role_node_and_a_router():
    c = sample_ctx()
    assert [d["metadata"]["name"] for d in engines.build(c)] == [
        "engines-prefill-engine-0",
        "engines-decode-engine-0",
    ]
    assert router.build_deployment(c)
    assert c.served_model_name == "tiny-llama"


def test_picker_command_line_is_what_dualpath_picker_accepts():
    c = ctx(caps=WITH_POOLS)
    container = inferencepool.picker_deployment(c)["spec"]["template"]["spec"]["containers"][0]
    argv = container["args"]
    args = build_parser(argv).parse_args(argv)
    assert args.listen == f"0.0.0.0:{c.spec.engines.picker.port}"  # type: ignore[union-attr]
    assert args.engines_file == Path("/etc/dualpath-engines/engines.yaml")
    assert args.hash_namespace == c.served_model_name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == args.metrics_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
