"""Tenant isolation through `dualpath router` (a real process, real controller, real agents,
recording engine doubles; the stack of tests/integration/test_router_proxy.py): the router
looks the prompt up under the request's salted hash chain and passes `cache_salt` to the
prefill and decode engines unchanged; with `--tenant-header` it derives the salt itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_agent.launch import AgentHandle
from dualpath_router.tenancy import TenantSalts

from tests.integration import test_router_proxy as proxy_tests
from tests.integration.test_router_proxy import (
    BLOCK,
    LAYOUT,
    NAMESPACE,
    Stack,
    route_of,
    running_stack,
)

# The router stack's fixtures, used by name (module-scoped: this module gets its own).
agents = proxy_tests.agents
stack = proxy_tests.stack
fresh_engines = proxy_tests.fresh_engines

pytestmark = pytest.mark.timeout(180)

SECRET = b"router-tenant-secret-0123456789"
HEADER = "X-Tenant-Id"


def prompt(seed: int, n: int = 4 * BLOCK + 10) -> list[int]:
    return [(seed * 131 + i * 7) % 1000 for i in range(n)]


def seed(agent: AgentHandle, tokens: list[int], salt: str | None, blocks: int) -> None:
    """Store the first `blocks` blocks of `tokens` under the chain of `salt`."""
    chain = block_chain(tokens, BLOCK, parent=root_hash(NAMESPACE, salt))
    with agent.client() as client:
        client.seed_synthetic(chain[:blocks], LAYOUT)


def ask(stack: Stack, tokens: list[int], headers: dict[str, str] | None = None, **extra: Any):  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "prompt": tokens, "max_tokens": 3, **extra}
    return httpx.post(f"{stack.router.url}/v1/completions", json=body, headers=headers)


def sent_salts(stack: Stack) -> tuple[Any, Any]:
    """The cache_salt the prefill and the decode engine got (absent: "-")."""
    (prefill,) = stack.prefill.completions()
    (decode,) = stack.decode.completions()
    return prefill.body.get("cache_salt", "-"), decode.body.get("cache_salt", "-")


def test_lookup_uses_the_salted_chain_and_engines_get_the_salt_unchanged(stack, agents):
    tokens = prompt(1)
    seed(agents[0], tokens, "tenant-a", 3)  # tenant A's first turn left 3 blocks

    same = ask(stack, tokens, cache_salt="tenant-a")
    assert same.status_code == 200, same.text
    assert route_of(same)["cached-tokens"] == str(3 * BLOCK)
    assert sent_salts(stack) == ("tenant-a", "tenant-a")

    # Tenant B, same prompt: its chain shares no hash with A's, so nothing is cached.
    stack.prefill.clear(), stack.decode.clear()
    other = ask(stack, tokens, cache_salt="tenant-b")
    assert other.status_code == 200, other.text
    assert route_of(other)["cached-tokens"] == "0"
    assert sent_salts(stack) == ("tenant-b", "tenant-b")

    # No salt: the unsalted chain, also not A's.
    stack.prefill.clear(), stack.decode.clear()
    plain = ask(stack, tokens)
    assert route_of(plain)["cached-tokens"] == "0"
    assert sent_salts(stack) == ("-", "-")


def test_unsalted_blocks_are_not_found_by_a_salted_request(stack, agents):
    tokens = prompt(2)
    seed(agents[0], tokens, None, 4)
    assert route_of(ask(stack, tokens))["cached-tokens"] == str(4 * BLOCK)
    assert route_of(ask(stack, tokens, cache_salt="tenant-a"))["cached-tokens"] == "0"


@pytest.mark.parametrize(
    ("salt", "words"),
    [(7, "must be a string"), ("", "must not be empty"), ("x" * 129, "limit"), ("a/b", "'/'")],
)
def test_a_bad_cache_salt_is_a_400_and_nothing_is_scheduled(stack, salt, words):
    decisions = stack.status().decisions_total
    response = ask(stack, prompt(3), cache_salt=salt)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "cache_salt"
    assert words in error["message"]
    assert stack.status().decisions_total == decisions
    assert stack.prefill.completions() == [] and stack.decode.completions() == []


# ----- salts derived from a tenant header -------------------------------------------------


@pytest.fixture(scope="module")
def tenant_stack(
    agents: tuple[AgentHandle, AgentHandle], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    secret = Path(tmp_path_factory.mktemp("tenant")) / "secret"
    secret.write_bytes(SECRET + b"\n")
    args = ["--tenant-header", HEADER, "--tenant-secret-file", str(secret)]
    with running_stack((agents[0].endpoint, agents[1].endpoint), router_extra_args=args) as s:
        yield s


def test_the_router_derives_the_salt_from_the_tenant_header(tenant_stack, agents):
    stack = tenant_stack
    tenants = TenantSalts(HEADER, SECRET)
    acme = tenants.salt("acme", None)
    tokens = prompt(4)
    seed(agents[0], tokens, acme, 2)

    response = ask(stack, tokens, headers={HEADER: "acme"})
    assert response.status_code == 200, response.text
    assert route_of(response)["cached-tokens"] == str(2 * BLOCK)
    assert sent_salts(stack) == (acme, acme)

    # Another tenant sending acme's salt as its own gets a salt of its own: no hit.
    stack.prefill.clear(), stack.decode.clear()
    spoof = ask(stack, tokens, headers={HEADER: "evil"}, cache_salt=acme)
    assert spoof.status_code == 200, spoof.text
    assert route_of(spoof)["cached-tokens"] == "0"
    derived = tenants.salt("evil", acme)
    assert derived != acme
    assert sent_salts(stack) == (derived, derived)


def test_without_the_tenant_header_the_request_is_refused(tenant_stack):
    stack = tenant_stack
    stack.prefill.clear(), stack.decode.clear()
    decisions = stack.status().decisions_total
    response = ask(stack, prompt(5))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == f"header {HEADER}"
    assert "required" in error["message"]
    assert stack.status().decisions_total == decisions
    assert stack.prefill.completions() == []
