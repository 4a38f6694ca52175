"""Render manifests/install.yaml from the Helm chart, with Helm's own engine.

`python hack/render_manifests.py` writes manifests/install.yaml: a Namespace, the CRDs from
charts/dualpath/crds/ and the chart's templates rendered with default values, in Helm's
install order, for `kubectl apply -f`. A unit test fails when the committed file is stale.

The chart is the single source: never edit install.yaml by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART_DIR = REPO / "charts" / "dualpath"
INSTALL_YAML = REPO / "manifests" / "install.yaml"
RELEASE_NAME = "dualpath"
NAMESPACE = "dualpath-system"
HEADER = (
    "# DualPath operator: CRDs, RBAC and the operator Deployment, for `kubectl apply -f`.\n"
    "# Generated from charts/dualpath by `python hack/render_manifests.py` (Helm engine,\n"
    "# default values, release {release!r}, namespace {namespace!r}). Do not edit by hand.\n"
)

# Helm's install order (pkg/release/util/kind_sorter.go), CRDs moved before everything that
# could reference them; kinds not listed go last in file order.
INSTALL_ORDER = (
    "Namespace",
    "CustomResourceDefinition",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
)

Manifest = dict[str, Any]


def load_chart() -> Any:
    import helm_python

    return helm_python.Chart.load(str(CHART_DIR))


def render_templates(
    values: dict[str, Any] | None = None,
    name: str = RELEASE_NAME,
    namespace: str = NAMESPACE,
) -> list[Manifest]:
    """The chart's rendered objects (NOTES.txt and empty documents dropped)."""
    rendered = load_chart().render(values, name=name, namespace=namespace)
    docs: list[Manifest] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return docs


def chart_crds() -> list[Manifest]:
    docs: list[Manifest] = []
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def render_notes(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> str:
    rendered = load_chart().render(values, name=RELEASE_NAME, namespace=namespace)
    return str(next(v for k, v in rendered.items() if k.endswith("NOTES.txt")))


def install_order(docs: list[Manifest]) -> list[Manifest]:
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    return sorted(docs, key=lambda d: rank.get(d.get("kind", ""), len(rank)))  # stable


def namespace_object(namespace: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "dualpath"}},
    }


def install_documents(namespace: str = NAMESPACE) -> list[Manifest]:
    docs = [namespace_object(namespace), *chart_crds(), *render_templates(namespace=namespace)]
    return install_order(docs)


def render_install_yaml(namespace: str = NAMESPACE) -> str:
    body = yaml.safe_dump_all(install_documents(namespace), sort_keys=False, width=100)
    return HEADER.format(release=RELEASE_NAME, namespace=namespace) + "---\n" + body


def install_yaml_is_stale() -> bool:
    return not INSTALL_YAML.exists() or INSTALL_YAML.read_text() != render_install_yaml()


def main(argv: list[str]) -> int:
    INSTALL_YAML.parent.mkdir(parents=True, exist_ok=True)
    INSTALL_YAML.write_text(render_install_yaml())
    print(f"wrote {INSTALL_YAML.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
