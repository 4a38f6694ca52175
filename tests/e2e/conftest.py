"""Fixtures of the e2e tier: one cluster per session from the chosen provider
(tests/support/e2e.py; DUALPATH_E2E_PROVIDER=local|kind|existing, default local)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.e2e import E2EEnv, ProviderUnavailable, e2e_environment


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item (rep_setup, rep_call): the ordered flow steps
    skip once an earlier one failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def e2e() -> Iterator[E2EEnv]:
    try:
        with e2e_environment() as env:
            yield env
    except ProviderUnavailable as exc:
        pytest.skip(f"e2e cluster unavailable: {exc}")


@pytest.fixture
def e2e_namespace(e2e: E2EEnv) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (without waiting: the cluster goes away or the
    next test uses another name)."""
    from kubernetes import client

    core = client.CoreV1Api(e2e.api_client())
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)
