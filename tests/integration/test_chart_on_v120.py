"""The shipped manifests on the oldest supported API server (v1.20, the test bed): every
object of manifests/install.yaml passes the server's own validation (server-side dry run),
and Helm, rendering against the server's real capabilities, picks the API versions v1.20
serves (policy/v1beta1 PodDisruptionBudget)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hack import render_manifests as rm
from tests.conftest import KubeEnv


@pytest.fixture
def install_namespace(kube: KubeEnv) -> Iterator[str]:
    """The namespace install.yaml targets, created for real (dry-run objects need it) unless
    present, and removed afterwards if this test created it."""
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client())
    existing = {n.metadata.name for n in core.list_namespace().items}
    if rm.NAMESPACE not in existing:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=rm.NAMESPACE)))
    try:
        yield rm.NAMESPACE
    finally:
        if rm.NAMESPACE not in existing:
            core.delete_namespace(rm.NAMESPACE)


def dry_run_create(api_client: Any, doc: dict[str, Any]) -> str:
    """Create with dryRun=All; returns "accepted", or "exists" for an object already there
    (the server validated it before finding the name taken)."""
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    resource = dynamic.DynamicClient(api_client).resources.get(
        api_version=doc["apiVersion"], kind=doc["kind"]
    )
    kwargs = {"namespace": doc["metadata"]["namespace"]} if resource.namespaced else {}
    try:
        resource.create(body=doc, dry_run="All", **kwargs)
    except ApiException as exc:
        if exc.status == 409:
            return "exists"
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc.body}") from exc
    return "accepted"


def test_install_yaml_passes_v120_server_validation(kube: KubeEnv, install_namespace: str) -> None:
    docs = [d for d in yaml.safe_load_all(rm.INSTALL_YAML.read_text()) if d]
    api = kube.api_client()
    outcomes = {}
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        outcomes[f"{doc['kind']}/{doc['metadata']['name']}"] = dry_run_create(api, doc)
    assert set(outcomes.values()) <= {"accepted", "exists"}
    # Only the CRD may already exist (other tests of the session install it).
    assert [k for k, v in outcomes.items() if v == "exists"] in (
        [],
        ["CustomResourceDefinition/dualpathclusters.dualpath.io"],
    )
    assert "Deployment/dualpath-operator" in outcomes


def test_helm_renders_v120_api_versions_against_the_server(kube: KubeEnv) -> None:
    import helm_python
    from kubernetes import client

    core = client.CoreV1Api(kube.api_client())
    ns = f"helm-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        cfg = helm_python.Config(kubeconfig_path=str(kube.kubeconfig), namespace=ns)
        release = cfg.install(
            str(rm.CHART_DIR),
            f"dp-{ns}",
            {"operator": {"replicas": 2}, "grafana": {"dashboard": {"enabled": False}}},
            dry_run="server",
        )
        docs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
        pdb = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        assert len(pdb) == 1 and pdb[0]["apiVersion"] == "policy/v1beta1"
        assert not cfg.list(all_states=True), "a dry run must not store a release"
    finally:
        core.delete_namespace(ns)
