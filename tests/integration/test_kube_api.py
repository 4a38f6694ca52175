"""The test bed itself: a real API server accepts a CRD, serves objects of it, and
garbage-collects owned children (controller-manager runs)."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.crds import install_crd, simple_crd
from tests.support.wait import wait_for

CRD = simple_crd(
    "testbed.dualpath.io",
    "widgets",
    "Widget",
    schema={
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1}},
            }
        },
    },
)


def test_crd_object_round_trip_and_schema_validation(kube, namespace):
    api = kube.api_client()
    install_crd(client.ApiextensionsV1Api(api), CRD)
    co = client.CustomObjectsApi(api)
    body = {
        "apiVersion": "testbed.dualpath.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    co.create_namespaced_custom_object("testbed.dualpath.io", "v1", namespace, "widgets", body)
    got = co.get_namespaced_custom_object("testbed.dualpath.io", "v1", namespace, "widgets", "w1")
    assert got["spec"] == {"size": 3}
    assert got["metadata"]["uid"]

    bad = dict(body, metadata={"name": "w2"}, spec={"size": 0})
    with pytest.raises(ApiException) as err:
        co.create_namespaced_custom_object("testbed.dualpath.io", "v1", namespace, "widgets", bad)
    assert err.value.status == 422
    assert "spec.size" in err.value.body


def test_owner_reference_cascade_delete(kube, namespace):
    if kube.local is None:
        pytest.skip("garbage collection is checked on the local control plane only")
    core = client.CoreV1Api(kube.api_client())
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def collected() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for("the child ConfigMap garbage-collected", collected, 60, interval=0.5, retry_on=())
