"""Shared fixtures and test tiers.

Tiers are pytest markers given by folder: tests/unit -> unit, tests/integration ->
integration, tests/e2e -> e2e, bench/ -> bench (excluded from `make test`).

Kubernetes: the session-scoped `kube` fixture starts a real control plane on this machine
(tests/support/localkube.py) once per run. To run against an existing cluster instead
(kind, for example), set DUALPATH_TEST_KUBECONFIG=/path/to/kubeconfig.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts and "tests" in parts:
                item.add_marker(getattr(pytest.mark, tier))


@dataclass
class KubeEnv:
    kubeconfig: Path
    # Set when the run started its own control plane (not an external cluster).
    local: object | None

    def api_client(self):  # type: ignore[no-untyped-def]
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeEnv]:
    external = os.environ.get("DUALPATH_TEST_KUBECONFIG")
    if external:
        yield KubeEnv(kubeconfig=Path(external), local=None)
        return
    from tests.support.localkube import local_control_plane

    with local_control_plane() as cp:
        yield KubeEnv(kubeconfig=cp.kubeconfig, local=cp)


@pytest.fixture
def namespace(kube: KubeEnv) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client

    api = client.CoreV1Api(kube.api_client())
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        api.delete_namespace(name)
