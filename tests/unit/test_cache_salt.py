"""Tenant isolation by cache salt: the salted hash chain (agents/dualpath_agent/blockhash.py)
and the router's handling of `cache_salt` (router/dualpath_router/tenancy.py, openai_models,
rewrite, config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dualpath_agent.blockhash import block_chain, root_hash
from dualpath_router.config import ConfigError, build_config
from dualpath_router.errors import RouterError
from dualpath_router.openai_models import Endpoint, validate_request
from dualpath_router.rewrite import Route, decode_body, prefill_body, salted_body
from dualpath_router.tenancy import MAX_SALT_CHARS, TenantSalts, check_cache_salt
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

NS = "tiny-model"
PROMPT = list(range(32))
# Pinned before salting existed: an unsalted chain must keep these exact values, or every
# block stored so far would stop being found.
PINNED_ROOT = "4919b70fd2e0270d0fb7c4efa0b57a29"
PINNED_CHAIN = ["fd5998a1860424b429a204f6ceb91d08", "7e5d3fd7cafc2e815a77d33c8ebc5b7b"]


def hashes(namespace: str, salt: str | None, tokens: list[int] = PROMPT) -> list[bytes]:
    return [b.block_hash for b in block_chain(tokens, 16, parent=root_hash(namespace, salt))]


# ----- the chain ---------------------------------------------------------------------------


@pytest.mark.parametrize("salt", [None, ""])
def test_no_salt_keeps_the_hashes_of_before(salt):
    assert root_hash(NS, salt).hex() == PINNED_ROOT
    assert [h.hex() for h in hashes(NS, salt)] == PINNED_CHAIN


def test_salted_chains_share_no_hash_with_the_unsalted_or_another_salts():
    plain, alice, bob = hashes(NS, None), hashes(NS, "alice"), hashes(NS, "bob")
    assert len(plain) == len(alice) == len(bob) == 2
    assert not set(plain) & set(alice)
    assert not set(plain) & set(bob)
    assert not set(alice) & set(bob)
    # A longer prompt of the same tenant shares its prefix; never another tenant's.
    longer = hashes(NS, "alice", PROMPT + list(range(100, 132)))
    assert longer[:2] == alice
    assert not set(longer) & set(bob + plain)


def test_same_salt_same_prompt_same_chain():
    assert hashes(NS, "alice") == hashes(NS, "alice")
    assert root_hash(NS, "alice") == root_hash(NS, "alice")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("ab", "c"), ("a", "bc")),  # no length prefix would make these one input
        (("a", "b"), ("b", "a")),
        (("", "ab"), ("ab", "")),  # a salt is not a namespace
        (("m", "x"), ("m", "x ")),
    ],
)
def test_namespace_and_salt_pairs_do_not_collide(one, other):
    assert root_hash(*one) != root_hash(*other)


@given(st.text(max_size=20), st.text(min_size=1, max_size=20), st.text(max_size=40))
def test_a_salted_root_is_never_an_unsalted_root(namespace, salt, other_namespace):
    # A separate blake2b personalization: no namespace reproduces a salted root.
    assert root_hash(namespace, salt) != root_hash(other_namespace)
    assert root_hash(namespace, salt) != root_hash(namespace)


@given(
    st.tuples(st.text(max_size=8), st.text(min_size=1, max_size=8)),
    st.tuples(st.text(max_size=8), st.text(min_size=1, max_size=8)),
)
def test_distinct_pairs_give_distinct_roots(one, other):
    if one != other:
        assert root_hash(*one) != root_hash(*other)


# ----- the router: validation --------------------------------------------------------------


def valid(body: dict[str, Any], endpoint: Endpoint = Endpoint.COMPLETIONS):  # type: ignore[no-untyped-def]
    return validate_request(endpoint, json.dumps(body).encode(), 1000)


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_the_clients_cache_salt_is_read_and_kept_in_the_body(endpoint):
    body: dict[str, Any] = {"cache_salt": "tenant-A_42", "prompt": [1, 2]}
    if endpoint is Endpoint.CHAT:
        body = {"cache_salt": "tenant-A_42", "messages": [{"role": "user", "content": "hi"}]}
    request = valid(body, endpoint)
    assert request.cache_salt == "tenant-A_42"
    assert request.body == body
    assert valid({"prompt": [1]}).cache_salt is None


@pytest.mark.parametrize(
    ("salt", "words"),
    [
        (42, "must be a string, got int"),
        (["a"], "must be a string, got list"),
        (True, "must be a string, got bool"),
        ({"t": 1}, "must be a string, got dict"),
        ("", "must not be empty"),
        ("x" * (MAX_SALT_CHARS + 1), f"more than the limit of {MAX_SALT_CHARS}"),
        ("a/b", "'/'"),
        ("a@b", "'@'"),
        ("a\\b", "'\\\\'"),
        ("a\x00b", "'\\x00'"),
    ],
)
def test_a_bad_cache_salt_is_a_400_naming_it(salt, words):
    with pytest.raises(RouterError) as info:
        valid({"prompt": [1, 2], "cache_salt": salt})
    error = info.value
    assert error.status == 400
    assert error.param == "cache_salt"
    assert error.message.startswith("cache_salt: ")
    assert words in error.message, error.message


def test_the_longest_allowed_salt_passes():
    assert check_cache_salt("s" * MAX_SALT_CHARS) == "s" * MAX_SALT_CHARS


# ----- the router: the engines' bodies -----------------------------------------------------

ROUTE = Route("r-1", "p-0", "d-0", "PE_READ", 0.0, "127.0.0.1:1", "127.0.0.1:2")


def test_the_salt_reaches_both_engines_unchanged():
    body = {"prompt": [1, 2, 3], "cache_salt": "tenant-A", "max_tokens": 4}
    forwarded = salted_body(body, "tenant-A")
    assert forwarded == body
    assert prefill_body(forwarded, ROUTE)["cache_salt"] == "tenant-A"
    assert decode_body(forwarded, ROUTE)["cache_salt"] == "tenant-A"


def test_a_derived_salt_replaces_the_clients_and_no_salt_sends_none():
    body = {"prompt": [1], "cache_salt": "chosen-by-client"}
    assert salted_body(body, "t-derived")["cache_salt"] == "t-derived"
    assert body["cache_salt"] == "chosen-by-client"  # the client's body is not changed
    assert "cache_salt" not in salted_body({"prompt": [1]}, None)


# ----- the router: salts derived from a tenant header --------------------------------------

SECRET = b"0123456789abcdef-router-secret"


def test_tenant_salts_are_stable_distinct_and_valid_vllm_salts():
    tenants = TenantSalts("X-Tenant-Id", SECRET)
    a = tenants.salt("acme", None)
    assert a == tenants.salt("acme", None)
    assert a == tenants.salt("acme", "")  # no client salt either way
    others = {
        tenants.salt("globex", None),
        tenants.salt("acme", "user-1"),
        tenants.salt("acme", "user-2"),
        TenantSalts("X-Tenant-Id", SECRET + b"!").salt("acme", None),  # another secret
    }
    assert a not in others and len(others) == 4
    for salt in others | {a}:
        assert check_cache_salt(salt) == salt  # vLLM accepts it as it is
    # Length-prefixed: moving characters between tenant and client salt changes the salt.
    assert tenants.salt("ab", "c") != tenants.salt("a", "bc")


def test_the_tenant_header_is_required_and_matched_without_case():
    tenants = TenantSalts("X-Tenant-Id", SECRET)
    got = tenants.resolve(Headers({"x-tenant-id": " acme "}), None)
    assert got == tenants.salt("acme", None)
    with pytest.raises(RouterError) as info:
        tenants.resolve(Headers({"authorization": "Bearer k"}), "s")
    assert info.value.status == 400
    assert info.value.param == "header X-Tenant-Id"
    assert "required" in info.value.message
    with pytest.raises(RouterError, match="limit"):
        tenants.resolve(Headers({"x-tenant-id": "t" * 300}), None)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TenantSalts("X-Tenant-Id", b"short")


def _config(tmp_path: Path, **settings: Any):  # type: ignore[no-untyped-def]
    return build_config(
        engine_args=[
            "id=p,role=prefill,url=http://127.0.0.1:1,node=n0,agent=127.0.0.1:2",
            "id=d,role=decode,url=http://127.0.0.1:3,node=n1,agent=127.0.0.1:4",
        ],
        engines_file=None,
        controller="127.0.0.1:5",
        hash_namespace="tiny",
        **settings,
    )


def test_router_config_tenancy(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    config = _config(tmp_path, tenant_header="X-Tenant-Id", tenant_secret_file=secret)
    assert config.tenant_header == "X-Tenant-Id"
    assert _config(tmp_path).tenant_header is None
    with pytest.raises(ConfigError, match="go together"):
        _config(tmp_path, tenant_header="X-Tenant-Id")
    with pytest.raises(ConfigError, match="tenant_secret_file"):
        _config(tmp_path, tenant_header="X-Tenant-Id", tenant_secret_file=tmp_path / "missing")
    short = tmp_path / "short"
    short.write_bytes(b"tiny\n")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        _config(tmp_path, tenant_header="X-Tenant-Id", tenant_secret_file=short)
