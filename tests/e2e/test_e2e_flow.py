"""The DualPath e2e flow on a real multi-node cluster, in order:

install the chart (Helm's engine) -> apply the sample DualPathCluster -> agents Running on
both nodes, the traffic controller Running, Ready=True -> agents registered with the
controller -> a request scheduled on the DE-read path moves real KV bytes from the decode
node's agent to the prefill node's agent (checksums verified) -> a spec change rolls the
agents -> delete cleans up -> helm upgrade, then uninstall, leave nothing behind.

Each step is one test; a step whose predecessor failed is skipped (saying which). On a
timeout the failure message carries the namespace's pods, events and log tails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.e2e import ROLE_LABEL, E2EEnv, describe_namespace
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dualpath"
SAMPLE = REPO / "manifests" / "samples" / "dualpathcluster-minimal.yaml"
ENGINES_SAMPLE = REPO / "manifests" / "samples" / "dualpathcluster-engines.yaml"
# vLLM on CPU: ~30 s to Ready per engine when alone; both nodes' engines, the agents (they
# roll to publish their hostPort) and the controller start together on two cores.
ENGINES_TIMEOUT = 480
DRIVER = Path(__file__).with_name("driver.py")
DRIVER_LABELS = {"app": "e2e-driver"}
RELEASE = "dualpath"
OPERATOR_NS = "dualpath-system"
GROUP, VERSION, PLURAL = "dualpath.io", "v1alpha1", "dualpathclusters"
CRD_NAME = f"{PLURAL}.{GROUP}"
MANAGED_BY = "app.kubernetes.io/managed-by"
# Steps take seconds on a laptop; CI's 2 busy cores need more.
READY_TIMEOUT = 240


class Flow:
    """State shared by the ordered steps of this module."""

    def __init__(self, env: E2EEnv, namespace: str) -> None:
        from kubernetes import client

        self.env = env
        self.namespace = namespace
        self.api = env.api_client()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.cluster_name = "e2e"
        self.failed: str | None = None
        self.installed = False
        self.manifest: list[dict[str, Any]] = []

    # --- helpers -------------------------------------------------------------------------
    def helm(self) -> Any:
        import helm_python

        return helm_python.Config(kubeconfig_path=str(self.env.kubeconfig), namespace=OPERATOR_NS)

    def chart_values(self, **operator: Any) -> dict[str, Any]:
        repository, _, tag = self.env.image.rpartition(":")
        return {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
            "operator": {"resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}, **operator},
        }

    def explain(self, *namespaces: str) -> Any:
        return lambda: "\n".join(
            describe_namespace(self.api, ns) for ns in (namespaces or (OPERATOR_NS, self.namespace))
        )

    def dpc(self) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.cluster_name
            )
        )

    def sample(self) -> dict[str, Any]:
        """The minimal sample, sized for a CI machine and pointed at this run's image and
        scratch directory (the sample's defaults: a 2 GiB pinned buffer per node, 8 GPUs)."""
        obj = yaml.safe_load(SAMPLE.read_text())
        obj = copy.deepcopy(obj)
        obj["metadata"] = {"name": self.cluster_name, "namespace": self.namespace}
        spec = obj["spec"]
        spec["image"] = self.env.image
        spec.setdefault("storage", {}).update(
            {"path": f"{self.env.node_scratch}/{self.namespace}/kv", "capacity": "1Gi"}
        )
        spec.setdefault("agent", {}).update({"hostBuffer": "128Mi"})
        spec["nodes"] = {"prefill": {"gpusPerNode": 1}, "decode": {"gpusPerNode": 1}}
        # The driver pod is a client of the agents and the controller: let it through their
        # NetworkPolicies (enforced by kind's kindnet, not by the local cluster's bridge CNI).
        spec["networkPolicy"] = {"clientsFrom": [{"podSelector": {"matchLabels": DRIVER_LABELS}}]}
        return obj

    def run_driver(self, args: list[str], timeout: float = 180) -> dict[str, Any]:
        """Run tests/e2e/driver.py in a pod of the DualPath image; its RESULT line. The
        driver acts as an engine: it mounts the cluster's engine identity (mutual TLS)."""
        from dualpath_operator.mtls import leaf_secret_name

        name = f"driver-{uuid.uuid4().hex[:6]}"
        self.core.create_namespaced_config_map(
            self.namespace,
            {"metadata": {"name": name}, "data": {"driver.py": DRIVER.read_text()}},
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": dict(DRIVER_LABELS)},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "driver",
                        "image": self.env.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [
                            "python3",
                            "/driver/driver.py",
                            "--tls-dir",
                            "/identity",
                            *args,
                        ],
                        "volumeMounts": [
                            {"name": "driver", "mountPath": "/driver"},
                            {"name": "identity", "mountPath": "/identity", "readOnly": True},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "driver", "configMap": {"name": name}},
                    {
                        "name": "identity",
                        "secret": {"secretName": leaf_secret_name(self.cluster_name, "engine")},
                    },
                ],
            },
        }
        self.core.create_namespaced_pod(self.namespace, pod)

        def finished() -> str | None:
            phase = self.core.read_namespaced_pod(name, self.namespace).status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        wait_for(f"driver {args[2:3]}", finished, timeout, explain=self.explain(self.namespace))
        logs = self.core.read_namespaced_pod_log(name, self.namespace)
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        self.core.delete_namespaced_config_map(name, self.namespace)
        lines = [line for line in logs.splitlines() if line.startswith("RESULT ")]
        assert lines, f"driver printed no RESULT:\n{logs}"
        return dict(json.loads(lines[-1].removeprefix("RESULT ")))

    def controller_endpoint(self) -> str:
        """The traffic controller's Service (the one with the controller's gRPC port)."""
        spec = self.dpc()["spec"]
        port = spec["trafficController"]["port"]
        for svc in self.core.list_namespaced_service(self.namespace).items:
            if any(p.port == port for p in svc.spec.ports or []) and svc.spec.cluster_ip != "None":
                return f"{svc.metadata.name}.{self.namespace}.svc.cluster.local:{port}"
        raise AssertionError(f"no Service exposes the controller port {port}")

    def agent_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=agent"
        ).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def engine_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=engine"
        ).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def engines_ready(self) -> dict[str, Any] | None:
        obj = self.cluster_ready()
        if obj is None:
            return None
        engines = obj["status"].get("engines") or {}
        both = all(engines.get(r, {}).get("summary") == "1/1" for r in ("prefill", "decode"))
        return obj if both else None

    def cluster_ready(self) -> dict[str, Any] | None:
        obj = self.dpc()
        status = obj.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions", [])}
        ready = conds.get("Ready", {})
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if ready.get("status") == "True" and current else None


@pytest.fixture(scope="module")
def flow(e2e: E2EEnv) -> Iterator[Flow]:
    from kubernetes import client

    core = client.CoreV1Api(e2e.api_client())
    ns = f"e2e-flow-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    state = Flow(e2e, ns)
    try:
        yield state
    finally:
        # Leave the cluster as found even when a step failed half-way.
        with contextlib.suppress(Exception):
            state.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, state.cluster_name
            )
        if state.installed:
            with contextlib.suppress(Exception):
                state.helm().uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)
        with contextlib.suppress(Exception):
            core.delete_namespace(ns)


@pytest.fixture
def step(flow: Flow, request: pytest.FixtureRequest) -> Iterator[Flow]:
    if flow.failed:
        pytest.skip(f"an earlier step failed: {flow.failed}")
    yield flow
    report = getattr(request.node, "rep_call", None)  # set by conftest's makereport hook
    if report is None or report.failed:
        flow.failed = request.node.name


# --- the steps ---------------------------------------------------------------------------


def test_1_chart_installs_and_operator_becomes_ready(step: Flow) -> None:
    from kubernetes import client

    core = step.core
    if OPERATOR_NS not in {n.metadata.name for n in core.list_namespace().items}:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NS)))
    release = step.helm().install(
        str(CHART), RELEASE, step.chart_values(), timeout=READY_TIMEOUT, wait="watcher"
    )
    step.installed = True
    assert release["status"] == "deployed", release
    step.manifest = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    crd = step.ext.read_custom_resource_definition(CRD_NAME)
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    dep = step.apps.read_namespaced_deployment(f"{RELEASE}-operator", OPERATOR_NS)
    assert dep.status.available_replicas == 1, step.explain(OPERATOR_NS)()


def test_2_sample_cluster_runs_on_both_nodes(step: Flow) -> None:
    step.custom.create_namespaced_custom_object(
        GROUP, VERSION, step.namespace, PLURAL, step.sample()
    )
    wait_for(
        "DualPathCluster Ready=True", step.cluster_ready, READY_TIMEOUT, explain=step.explain()
    )
    pods = step.agent_pods()
    by_role = {}
    for pod in pods:
        assert pod.status.phase == "Running", pod.metadata.name
        node = step.core.read_node(pod.spec.node_name)
        by_role[pod.metadata.labels.get(ROLE_LABEL)] = node.metadata.labels.get(ROLE_LABEL)
    # One agent per role, each on a node of its role.
    assert by_role == {"prefill": "prefill", "decode": "decode"}, by_role
    controllers = step.core.list_namespaced_pod(
        step.namespace, label_selector="app.kubernetes.io/component=controller"
    ).items
    assert controllers and all(p.status.phase == "Running" for p in controllers)
    status = step.dpc()["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_3_agents_register_with_the_controller(step: Flow) -> None:
    out = step.run_driver(["--controller", step.controller_endpoint(), "engines"])
    assert not out.get("timeout"), out
    nodes = {e["node"] for e in out["engines"] if not e["drained"]}
    agent_nodes = {p.spec.node_name for p in step.agent_pods()}
    assert agent_nodes <= nodes, (agent_nodes, out)
    assert out["policy"] == step.dpc()["spec"]["trafficController"]["policy"]


def test_4_de_read_moves_kv_bytes_from_decode_to_prefill_node(step: Flow) -> None:
    from dualpath_common.models import get_model_preset

    spec = step.dpc()["spec"]
    model = get_model_preset(spec["storage"]["model"]["preset"])
    out = step.run_driver(
        [
            "--controller", step.controller_endpoint(), "de-read", "--blocks", "4",
            "--layers", str(model.layers), "--block-tokens", str(spec["storage"]["blockTokens"]),
            "--bytes-per-token-layer", str(model.bytes_per_token_layer),
        ]
    )  # fmt: skip
    shown = {
        **out,
        "load": {
            **out.get("load", {}),
            "layers_seen": len(out.get("load", {}).get("layers_seen", [])),
        },
    }
    print("de-read driver result:", json.dumps(shown, indent=1))  # numbers for people (-s)
    assert "error" not in out, out
    first, second = out["first"], out["second"]
    # The paper's path rule: an idle cluster reads on the prefill side; that read is booked on
    # the prefill node's queue, so the next request reads through the decode node.
    assert first["read_path"] == "READ_PATH_PE_READ", first
    assert second["read_path"] == "READ_PATH_DE_READ", second
    assert second["prefill_node"] != second["decode_node"]
    load, region = out["load"], out["region"]
    assert load["blocks_verified"] == 4 and load["blocks_remote"] == 4, load
    assert load["bytes_from_peer"] == load["bytes_total"] == region["expected_bytes"] > 0, load
    assert load["bytes_from_local_storage"] == 0, load
    assert load["layers_seen"] == list(range(model.layers)), "layer-wise streaming, in order"
    assert region["sha256"] == region["expected_sha256"], "bytes differ from what was stored"
    assert out["decode_agent"]["storage_bytes_read"] >= load["bytes_total"]
    assert out["prefill_agent"]["storage_bytes_read"] == 0
    pods = {p.status.pod_ip: p.spec.node_name for p in step.agent_pods()}
    assert pods.get(second["decode_agent"].rsplit(":", 1)[0]) == second["decode_node"]


def test_4a_engines_sample_serves_on_both_nodes(step: Flow) -> None:
    """The engines sample's spec.engines, applied to the running cluster: one vLLM engine
    per role node beside its agent, the router in front, all Ready."""
    if step.env.engine_image is None:
        pytest.skip(
            "no engine image for this provider (DUALPATH_E2E_ENGINES=0, or the existing "
            "provider without DUALPATH_E2E_ENGINE_IMAGE): the engine steps need one"
        )
    sample = yaml.safe_load(ENGINES_SAMPLE.read_text())["spec"]
    engines = {**sample["engines"], "image": step.env.engine_image}
    patch = {
        "spec": {
            "engines": engines,
            "trafficController": {"policy": sample["trafficController"]["policy"]},
            # The served model's KV geometry (the router turns tokens into bytes with it).
            "storage": {"model": {"preset": None, **sample["storage"]["model"]}},
        }
    }
    step.custom.patch_namespaced_custom_object(
        GROUP, VERSION, step.namespace, PLURAL, step.cluster_name, patch
    )
    obj = wait_for(
        "engines Ready on both nodes, router Ready",
        step.engines_ready,
        ENGINES_TIMEOUT,
        explain=step.explain(),
    )
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["EnginesReady"]["status"] == "True", conditions["EnginesReady"]
    # No InferencePool CRD on this cluster: said, not silent.
    assert conditions["InferencePoolReady"]["reason"] == "InferencePoolCRDMissing"
    by_role = {}
    for pod in step.engine_pods():
        node = step.core.read_node(pod.spec.node_name)
        by_role[pod.metadata.labels["dualpath.io/engine"]] = node.metadata.labels.get(ROLE_LABEL)
    assert by_role == {"prefill": "prefill", "decode": "decode"}, by_role
    files = step.core.read_namespaced_config_map(f"{step.cluster_name}-engines", step.namespace)
    listed = yaml.safe_load(files.data["engines.yaml"])["engines"]
    hosts = {p.metadata.name: p.status.host_ip for p in step.engine_pods()}
    for entry in listed:  # each engine is paired with its own node's agent
        assert entry["agent"].rsplit(":", 1)[0] == hosts[entry["id"]], (entry, hosts)


def test_4b_router_answers_and_a_second_turn_loads_over_the_decode_node(step: Flow) -> None:
    import numpy as np
    from dualpath_common.net import free_port
    from dualpath_vllm.model import default_model_dir, ensure_model_subprocess
    from dualpath_vllm.process import EngineProcess, EngineSpec
    from dualpath_vllm.reference import greedy_completion

    spec = step.dpc()["spec"]
    block = spec["storage"]["blockTokens"]
    model = step.dpc()["spec"]["engines"]["model"]["generated"]
    rng = np.random.default_rng(14)
    prompt = [int(t) for t in rng.integers(10, 1000, 3 * block + 10)]
    extra = [int(t) for t in rng.integers(10, 1000, 40)]
    decode_agent = next(p for p in step.agent_pods() if p.metadata.labels[ROLE_LABEL] == "decode")
    metrics = f"http://{decode_agent.status.pod_ip}:{spec['agent']['metricsPort']}/metrics"
    router = f"http://{step.cluster_name}-router.{step.namespace}.svc.cluster.local:8000"
    out = step.run_driver(
        [
            "--controller", step.controller_endpoint(), "chat", "--router", router,
            "--model", model, "--prompt", json.dumps(prompt), "--extra", json.dumps(extra),
            "--decode-agent-metrics", metrics,
        ],
        timeout=300,
    )  # fmt: skip
    shown = {k: v for k, v in out.items() if k not in ("turn1", "turn2")}
    print("chat driver result:", json.dumps(shown, indent=1))  # numbers for people (-s)
    assert "error" not in out, out
    chat = out["chat"]
    assert chat["status"] == 200, chat
    assert chat["body"]["choices"][0]["message"]["content"], chat
    # Turn 2's cached prefix was loaded, through the decode node: the router scheduled it on
    # a path with a decode-side read, and the decode node's agent sent KV bytes to a peer.
    paths = {k: v for k, v in out["router_delta"].items() if "requests_total" in k}
    assert any(
        ("SPLIT" in k.upper() or "DE_READ" in k.upper()) and 'outcome="ok"' in k for k in paths
    ), out["router_delta"]
    cached = sum(v for k, v in out["router_delta"].items() if "cached_tokens" in k)
    assert cached >= 3 * block, out["router_delta"]
    sent = sum(
        v
        for k, v in out["decode_agent_delta"].items()
        if 'path="de_read"' in k and 'direction="out"' in k
    )
    assert sent > 0, out["decode_agent_delta"]
    # Tokens equal to a reference engine that computes every prompt (same model, same args).
    model_dir = ensure_model_subprocess(default_model_dir())
    reference = EngineProcess(
        EngineSpec(model_dir, free_port(), engine_id="reference", extra_args=[
            "--no-enable-prefix-caching", "--served-model-name", model,
        ])
    )  # fmt: skip
    with reference:
        for turn in ("turn1", "turn2"):
            expected = greedy_completion(reference.base_url, out[turn]["prompt"], 8)
            assert out[turn]["tokens"] == expected.token_ids, (turn, out[turn], expected)


def test_4c_an_engines_spec_change_rolls_the_engines(step: Flow) -> None:
    if step.env.engine_image is None:
        pytest.skip("no engine image for this provider: see test_4a")
    before = {p.metadata.uid for p in step.engine_pods()}
    assert len(before) == 2, before
    patch = {"spec": {"engines": {"loadMode": "async"}}}
    step.custom.patch_namespaced_custom_object(
        GROUP, VERSION, step.namespace, PLURAL, step.cluster_name, patch
    )

    def rolled() -> bool:
        pods = step.engine_pods()
        fresh = [p for p in pods if p.metadata.uid not in before]
        return len(fresh) == len(pods) == 2 and bool(step.engines_ready())

    wait_for("engines rolled to the new spec", rolled, ENGINES_TIMEOUT, explain=step.explain())


def test_5_spec_change_rolls_the_agents(step: Flow) -> None:
    before = {p.metadata.uid for p in step.agent_pods()}
    patch = {"spec": {"agent": {"logLevel": "debug"}}}
    step.custom.patch_namespaced_custom_object(
        GROUP, VERSION, step.namespace, PLURAL, step.cluster_name, patch
    )

    def rolled() -> bool:
        pods = step.agent_pods()
        fresh = [p for p in pods if p.metadata.uid not in before]
        ready = all(
            p.status.phase == "Running" and all(c.ready for c in p.status.container_statuses or [])
            for p in fresh
        )
        return len(fresh) == len(before) == len(pods) and ready and bool(step.cluster_ready())

    wait_for("agents rolled to the new spec", rolled, READY_TIMEOUT, explain=step.explain())
    agents = step.apps.list_namespaced_daemon_set(
        step.namespace, label_selector="app.kubernetes.io/component=agent"
    ).items
    for ds in agents:
        env = {e.name: e.value for e in ds.spec.template.spec.containers[0].env or []}
        assert env.get("DUALPATH_LOG_LEVEL") == "debug", ds.metadata.name


def test_6_delete_cleans_up_every_child(step: Flow) -> None:
    owned = [
        ("daemonsets", lambda: step.apps.list_namespaced_daemon_set(step.namespace).items),
        ("deployments", lambda: step.apps.list_namespaced_deployment(step.namespace).items),
        ("services", lambda: step.core.list_namespaced_service(step.namespace).items),
        ("configmaps", lambda: step.core.list_namespaced_config_map(step.namespace).items),
        ("pods", lambda: step.core.list_namespaced_pod(step.namespace).items),
    ]

    def ours(items: list[Any]) -> list[str]:
        return [
            i.metadata.name for i in items if (i.metadata.labels or {}).get("dualpath.io/cluster")
        ]

    assert ours(owned[0][1]()), "nothing to clean up: the children were never created"
    step.custom.delete_namespaced_custom_object(
        GROUP, VERSION, step.namespace, PLURAL, step.cluster_name
    )

    def gone() -> bool:
        left = {kind: ours(list_fn()) for kind, list_fn in owned}
        assert all(isinstance(v, list) for v in left.values())
        return not any(left.values())

    wait_for(
        "every child and pod of the DualPathCluster gone",
        gone,
        READY_TIMEOUT,
        explain=step.explain(),
    )


def test_7_helm_upgrade_to_ha_then_uninstall_leaves_nothing_behind(step: Flow) -> None:
    helm = step.helm()
    name = f"{RELEASE}-operator"
    old = step.apps.read_namespaced_deployment(name, OPERATOR_NS)
    # Upgrade to two replicas (leader election + PodDisruptionBudget) and debug logs.
    release = helm.upgrade(
        str(CHART),
        RELEASE,
        step.chart_values(replicas=2, logLevel="debug"),
        timeout=READY_TIMEOUT,
        wait="watcher",
    )
    assert release["status"] == "deployed" and release["revision"] == 2, release
    step.manifest = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    new = step.apps.read_namespaced_deployment(name, OPERATOR_NS)
    assert new.metadata.generation > old.metadata.generation
    assert "--log-level=debug" in new.spec.template.spec.containers[0].args
    assert new.status.available_replicas == 2
    assert any(d["kind"] == "PodDisruptionBudget" for d in step.manifest)
    pods = step.core.list_namespaced_pod(
        OPERATOR_NS, label_selector="app.kubernetes.io/component=operator"
    ).items
    names = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}

    def one_leader() -> str | None:
        from kubernetes import client

        lease = client.CoordinationV1Api(step.api).read_namespaced_lease(name, OPERATOR_NS)
        holder = lease.spec.holder_identity or ""
        return holder if any(holder.startswith(n) for n in names) else None

    wait_for(
        "one operator replica holding the Lease", one_leader, 60, explain=step.explain(OPERATOR_NS)
    )

    helm.uninstall(RELEASE, wait="watcher", timeout=120)
    step.installed = False
    leftovers = [
        f"{d['kind']}/{d['metadata']['name']}" for d in step.manifest if lookup(step, d) is not None
    ]
    assert not leftovers, f"helm uninstall left {leftovers}"
    assert not helm.list(all_states=True), "release history left behind"
    # Helm keeps CRDs by design (NOTES.txt says so); removing it is the user's call.
    step.ext.delete_custom_resource_definition(CRD_NAME)
    step.core.delete_namespace(OPERATOR_NS)

    def all_gone() -> bool:
        crds = {c.metadata.name for c in step.ext.list_custom_resource_definition().items}
        namespaces = {n.metadata.name for n in step.core.list_namespace().items}
        return CRD_NAME not in crds and OPERATOR_NS not in namespaces

    wait_for("the CRD and the operator namespace gone", all_gone, 120)


def lookup(step: Flow, doc: dict[str, Any]) -> Any:
    """The live object for a rendered manifest document, or None."""
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    dyn = dynamic.DynamicClient(step.api)
    resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    try:
        if resource.namespaced:
            return resource.get(
                name=doc["metadata"]["name"],
                namespace=doc["metadata"].get("namespace", OPERATOR_NS),
            )
        return resource.get(name=doc["metadata"]["name"])
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
