"""CustomResourceDefinitions for the tests that run against a real API server."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.wait import wait_for


def install_crd(ext: client.ApiextensionsV1Api, body: dict[str, Any]) -> None:
    """Create the CRD, or replace one left by an earlier run; then wait until it serves."""
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current.metadata.resource_version},
        }
        ext.replace_custom_resource_definition(name, body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(f"CRD {name} established", established, timeout=30)


def simple_crd(
    group: str, plural: str, kind: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A namespaced CRD with one version, v1; without a schema, one that keeps any fields (a
    minimal stand-in for an add-on's CRD: Multus, Prometheus Operator)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": schema
                        or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
