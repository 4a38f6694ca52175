"""The operator's side of mutual TLS: issuer choice, role certificates, renewal and CA
rotation decisions (fake clock), Secret and cert-manager builders, status, and the
issuance step run against an in-memory API server."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import pytest
from dualpath_common import pki
from dualpath_operator import children
from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.children import certmanager, daemonset, deployment, tls_secrets
from dualpath_operator.children.common import ClusterContext
from dualpath_operator.discovery import Capabilities, capabilities_from_groups
from dualpath_operator.issuance import Issuance
from dualpath_operator.kube import ApiError, ResourceType
from dualpath_operator.mtls import (
    CA_PROPAGATION_SECONDS,
    LEAF_ROLES,
    leaf_specs,
    resolve_mode,
)
from dualpath_operator.permissions import allows
from dualpath_operator.renewal import (
    CaState,
    apply_ca_plan,
    ca_state,
    cert_facts,
    plan_ca,
    plan_leaf,
    renew_at,
    secret_bytes,
    signed_by,
    split_pem,
    trust_bundle,
)
from dualpath_operator.status import (
    CertificatesState,
    MonitoringState,
    NetworkState,
    Observation,
    Rollout,
    compute_status,
)

from tests.unit.test_operator_children import ctx as cluster_context

NO_CM = Capabilities(pdb_api_version="policy/v1", network_attachments=False, service_monitors=False)
CM = Capabilities(
    pdb_api_version="policy/v1",
    network_attachments=False,
    service_monitors=False,
    cert_manager=True,
)


NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def ctx(spec: dict[str, Any] | None = None, caps: Capabilities = NO_CM) -> ClusterContext:
    return cluster_context(spec, caps)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.new_ca("test-ca")


@pytest.fixture(scope="module")
def other_ca() -> pki.CertificateAuthority:
    return pki.new_ca("someone-else")


def leaf_data(ca: pki.CertificateAuthority, role: str = "agent", **kw: Any) -> dict[str, bytes]:
    want = {leaf.role: leaf for leaf in leaf_specs("demo", "ns1")}[role]
    cert, key = pki.issue(
        ca,
        role,
        kw.pop("namespace", "ns1"),
        kw.pop("cluster", "demo"),
        dns_names=kw.pop("dns_names", want.extra_dns_names),
        **kw,
    )
    return {"ca.crt": ca.cert_pem, "tls.crt": cert, "tls.key": key}


# --- what the spec asks for ----------------------------------------------------------------


def test_api_defaults_mtls_on_with_auto_issuer():
    mtls = ctx().spec.security.mtls
    assert (mtls.issuer, mtls.certificate_days, mtls.renew_before_fraction) == ("auto", 30, 0.33)
    with pytest.raises(ValueError):
        DualPathClusterSpec.model_validate(
            {"storage": {"model": {"preset": "tiny-test"}}, "security": {"mtls": {"issuer": "x"}}}
        )


@pytest.mark.parametrize(
    ("issuer", "caps", "mode"),
    [
        ("auto", NO_CM, "operator"),
        ("auto", CM, "cert-manager"),
        ("operator", CM, "operator"),
        ("cert-manager", NO_CM, "cert-manager"),  # stands; status reports the missing CRD
    ],
)
def test_issuer_mode(issuer, caps, mode):
    assert resolve_mode(issuer, caps) == mode


def test_cert_manager_is_discovered_by_its_certificate_and_issuer_crds():
    groups = {"groups": [{"name": "cert-manager.io", "versions": [{"version": "v1"}]}]}
    assert capabilities_from_groups(groups).cert_manager
    both = {"cert-manager.io/v1": {"certificates", "issuers", "clusterissuers"}}
    assert capabilities_from_groups(groups, both).cert_manager
    only_certs = {"cert-manager.io/v1": {"certificates"}}
    assert not capabilities_from_groups(groups, only_certs).cert_manager
    assert not capabilities_from_groups({"groups": []}).cert_manager


def test_leaf_specs_name_every_role_with_its_spiffe_id():
    specs = {leaf.role: leaf for leaf in leaf_specs("demo", "ns1")}
    assert tuple(specs) == LEAF_ROLES == ("agent", "controller", "router", "engine")
    agent = specs["agent"]
    assert agent.secret_name == "demo-agent-tls"
    assert agent.spiffe_id == "spiffe://dualpath.io/ns/ns1/dpc/demo/agent"
    assert agent.dns_names == ("agent.dualpath.internal",)
    ctl = specs["controller"]
    assert ctl.dns_names[0] == "controller.dualpath.internal"
    assert "demo-controller.ns1.svc" in ctl.extra_dns_names
    assert "demo-controller.ns1.svc.cluster.local" in ctl.extra_dns_names


# --- reading certificates --------------------------------------------------------------------


def test_cert_facts_and_signature(ca, other_ca):
    data = leaf_data(ca, "controller")
    facts = cert_facts(data["tls.crt"])
    assert facts is not None and not facts.is_ca
    assert facts.uris == {"spiffe://dualpath.io/ns/ns1/dpc/demo/controller"}
    assert "demo-controller.ns1.svc" in facts.dns_names
    assert dt.timedelta(days=29) < facts.not_after - NOW < dt.timedelta(days=31)
    assert signed_by(data["tls.crt"], ca.cert_pem)
    assert not signed_by(data["tls.crt"], other_ca.cert_pem)
    assert cert_facts(b"garbage") is None and cert_facts(None) is None
    assert len(split_pem(ca.cert_pem + other_ca.cert_pem)) == 2


# --- role certificates: keep, renew, rebundle --------------------------------------------------


def plan(data, ca, bundle=None, now=NOW, role="agent", fraction=0.33):
    want = {leaf.role: leaf for leaf in leaf_specs("demo", "ns1")}[role]
    return plan_leaf(data, want, ca.cert_pem, bundle or ca.cert_pem, fraction, now)


def test_a_fresh_certificate_is_kept(ca):
    for role in LEAF_ROLES:
        p = plan(leaf_data(ca, role), ca, role=role)
        assert (p.action, p.cause) == ("keep", "ok"), (role, p)


def test_a_missing_or_broken_certificate_is_issued(ca, other_ca):
    assert plan(None, ca).cause == "missing"
    assert plan({"tls.crt": b"x"}, ca).cause == "missing"
    broken = {**leaf_data(ca), "tls.crt": b"-----BEGIN CERTIFICATE-----\nAAAA\n"}
    assert (plan(broken, ca).action, plan(broken, ca).cause) == ("issue", "invalid")
    swapped = {**leaf_data(ca), "tls.key": leaf_data(ca)["tls.key"]}  # another key
    assert plan(swapped, ca).cause == "invalid"


def test_renewal_follows_the_lifetime_left_on_a_fake_clock(ca):
    data = leaf_data(ca)  # 30 days
    assert plan(data, ca, now=NOW + 19 * DAY).action == "keep"  # 11 days of 30 left: 36%
    late = plan(data, ca, now=NOW + 21 * DAY)  # 9 of 30 left: 30% < 33%
    assert (late.action, late.cause) == ("issue", "expiring") and "lifetime left" in late.reason
    expired = plan(data, ca, now=NOW + 31 * DAY)
    assert expired.cause == "expiring" and expired.reason.startswith("expired")
    assert plan(data, ca, now=NOW + 19 * DAY, fraction=0.5).action == "issue"
    when = renew_at(data["tls.crt"], 0.33)
    assert when is not None and NOW + 19 * DAY < when < NOW + 21 * DAY


def test_wrong_names_or_another_ca_are_reissued(ca, other_ca):
    assert plan(leaf_data(other_ca), ca).cause == "ca-changed"
    assert plan(leaf_data(ca, cluster="other"), ca).cause == "names-changed"
    assert plan(leaf_data(ca, namespace="ns2"), ca).cause == "names-changed"
    # an agent certificate in the controller's Secret: wrong role, wrong names
    assert plan(leaf_data(ca, "agent"), ca, role="controller").cause == "names-changed"
    assert plan(leaf_data(ca, ips=["10.0.0.1"]), ca).cause == "names-changed"
    assert plan(leaf_data(ca, dns_names=["extra.example"]), ca).cause == "names-changed"


def test_a_changed_trust_bundle_only_refreshes_ca_crt(ca, other_ca):
    p = plan(leaf_data(ca), ca, bundle=ca.cert_pem + other_ca.cert_pem)
    assert (p.action, p.cause) == ("rebundle", "bundle")


# --- the CA: create, publish the successor, promote, retire ------------------------------------


class CaFactory:
    def __init__(self) -> None:
        self.made: list[pki.CertificateAuthority] = []

    def __call__(self) -> pki.CertificateAuthority:
        self.made.append(pki.new_ca(f"ca-{len(self.made)}"))
        return self.made[-1]


def test_ca_is_created_once_and_kept(ca):
    assert plan_ca(CaState(active=None), NOW).action == "create"
    made = CaFactory()
    state = apply_ca_plan(CaState(active=None), plan_ca(CaState(active=None), NOW), made, NOW)
    assert state.active == made.made[0]
    assert plan_ca(state, NOW).action == "keep"
    # round trip through the Secret's data
    assert ca_state(state.to_data()) == state
    # a CA whose key does not match (or that is not a CA) is not usable: a new one is made
    bad = {"ca.crt": ca.cert_pem, "ca.key": pki.new_ca("x").key_pem}
    assert ca_state(bad).active is None
    leaf = leaf_data(ca)
    assert ca_state({"ca.crt": leaf["tls.crt"], "ca.key": leaf["tls.key"]}).active is None


def test_ca_rotation_overlaps_old_and_new_in_every_bundle(ca):
    made = CaFactory()
    state = CaState(active=ca)
    t1 = NOW + 250 * DAY  # 115 days left < 120
    step = plan_ca(state, t1)
    assert step.action == "publish-next"
    state = apply_ca_plan(state, step, made, t1)
    new = made.made[0]
    assert state.active == ca and state.next == new and state.next_published_at == t1
    assert split_pem(trust_bundle(state, t1)) == split_pem(ca.cert_pem + new.cert_pem)
    # Published but not yet signing: leaves of the old CA stay; their bundle grows.
    leaf = leaf_data(ca)
    assert plan(leaf, ca, bundle=trust_bundle(state, t1)).action == "rebundle"
    # The annotation keeps the publication time across reconciles.
    reread = ca_state(state.to_data(), {"dualpath.io/next-ca-published-at": t1.isoformat()})
    assert reread.next == new and reread.next_published_at == t1
    assert plan_ca(reread, t1 + dt.timedelta(seconds=CA_PROPAGATION_SECONDS - 1)).action == "keep"
    t2 = t1 + dt.timedelta(seconds=CA_PROPAGATION_SECONDS)
    step = plan_ca(reread, t2)
    assert step.action == "promote"
    state = apply_ca_plan(reread, step, made, t2)
    assert state.active == new and state.next is None and state.retired == (ca.cert_pem,)
    bundle = trust_bundle(state, t2)
    assert split_pem(bundle)[0] == new.cert_pem  # the signing CA first
    assert split_pem(bundle) == [new.cert_pem, ca.cert_pem]
    # Now the old CA's leaves are re-issued by the new one; peers still trust both.
    assert plan(leaf, new, bundle=bundle, now=t2).cause == "ca-changed"
    assert len(made.made) == 1


def test_a_retired_ca_leaves_the_bundles_when_it_expires(ca):
    short_lived = pki.new_ca("old", valid_days=1)
    state = CaState(active=ca, retired=(short_lived.cert_pem,))
    assert plan_ca(state, NOW).action == "keep"
    assert split_pem(trust_bundle(state, NOW)) == [ca.cert_pem, short_lived.cert_pem]
    later = NOW + 2 * DAY
    assert split_pem(trust_bundle(state, later)) == [ca.cert_pem]  # never offered expired
    step = plan_ca(state, later)
    assert step.action == "drop-expired"
    state = apply_ca_plan(state, step, CaFactory(), later)
    assert state.retired == () and state.active == ca


def test_a_successor_whose_publication_time_was_lost_is_republished_not_replaced(ca):
    successor = pki.new_ca("next")
    state = ca_state({**CaState(active=ca, next=successor).to_data()}, annotations={})
    step = plan_ca(state, NOW)
    assert step.action == "publish-next"
    made = CaFactory()
    state = apply_ca_plan(state, step, made, NOW)
    assert state.next == successor and state.next_published_at == NOW and not made.made


def test_an_expired_ca_is_replaced_at_once_by_a_published_successor(ca):
    state = CaState(active=ca, next=pki.new_ca("next"), next_published_at=NOW + 400 * DAY)
    assert plan_ca(state, NOW + 366 * DAY).action == "promote"


# --- Secret builders ----------------------------------------------------------------------------


def test_secret_builders_are_owned_labelled_and_shaped_like_cert_manager(ca):
    c = ctx()
    secret = tls_secrets.ca_secret(c, {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem})
    assert (secret["type"], secret["metadata"]["name"]) == ("Opaque", "demo-ca")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["metadata"]["labels"]["dualpath.io/cluster"] == "demo"
    assert base64.b64decode(secret["data"]["ca.key"]) == ca.key_pem
    leaf = leaf_specs("demo", "ns1")[0]
    data = leaf_data(ca)
    obj = tls_secrets.leaf_secret(c, leaf, data["tls.crt"], data["tls.key"], b"bundle")
    assert obj["type"] == "kubernetes.io/tls" and obj["metadata"]["name"] == "demo-agent-tls"
    assert sorted(obj["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    assert secret_bytes(obj)["ca.crt"] == b"bundle"


# --- cert-manager children ------------------------------------------------------------------------


def test_cert_manager_chain_and_one_certificate_per_role():
    c = ctx({"security": {"mtls": {"certificateDays": 10, "renewBeforeFraction": 0.5}}}, CM)
    selfsigned, ca_issuer = certmanager.issuers(c)
    assert selfsigned["spec"] == {"selfSigned": {}}
    assert ca_issuer["spec"] == {"ca": {"secretName": "demo-issuer-ca"}}
    ca_cert, *leaves = certmanager.certificates(c)
    assert ca_cert["spec"]["isCA"] and ca_cert["spec"]["issuerRef"]["name"] == "demo-selfsigned"
    assert ca_cert["spec"]["secretName"] == "demo-issuer-ca"
    by_secret = {cert["spec"]["secretName"]: cert for cert in leaves}
    assert sorted(by_secret) == sorted(f"demo-{r}-tls" for r in LEAF_ROLES)
    ctl = by_secret["demo-controller-tls"]["spec"]
    assert ctl["uris"] == ["spiffe://dualpath.io/ns/ns1/dpc/demo/controller"]
    assert ctl["dnsNames"][0] == "controller.dualpath.internal"
    assert "demo-controller.ns1.svc" in ctl["dnsNames"]
    assert (ctl["duration"], ctl["renewBefore"]) == ("14400m", "7200m")
    assert ctl["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "demo-ca"}
    assert {"server auth", "client auth"} <= set(ctl["usages"])
    assert ctl["privateKey"]["algorithm"] == "ECDSA"
    assert ctl["secretTemplate"]["labels"]["app.kubernetes.io/managed-by"] == "dualpath-operator"
    for obj in [selfsigned, ca_issuer, ca_cert, *leaves]:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_cert_manager_children_only_in_cert_manager_mode_and_pruned_otherwise():
    kinds = certmanager.KINDS
    assert all(kind.prune and kind in children.CHILD_KINDS for kind in kinds)
    assert all(kind.resource(NO_CM) is None for kind in kinds)
    assert [len(children.desired(k, ctx(caps=CM))) for k in kinds] == [2, 5]
    operator_mode = ctx({"security": {"mtls": {"issuer": "operator"}}}, CM)
    assert [children.desired(k, operator_mode) for k in kinds] == [[], []]
    assert [children.desired(k, ctx(caps=NO_CM)) for k in kinds] == [[], []]


def test_operator_holds_the_permissions_mtls_needs():
    for rt in (tls_secrets.SECRET, certmanager.ISSUER, certmanager.CERTIFICATE):
        for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
            assert allows(rt.group, rt.plural, verb), (rt, verb)


# --- pods ------------------------------------------------------------------------------------------


def test_pods_mount_their_roles_identity_read_only_and_pass_tls_dir():
    c = ctx()
    for obj, secret in (
        (deployment.build(c)[0], "demo-controller-tls"),
        *((ds, "demo-agent-tls") for ds in daemonset.build(c)),
    ):
        pod = obj["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "mtls"]
        assert volume["secret"] == {"secretName": secret, "defaultMode": 0o440}  # key not o+r
        container = pod["containers"][0]
        assert {"name": "mtls", "mountPath": "/etc/dualpath-mtls", "readOnly": True} in container[
            "volumeMounts"
        ]
        args = container["args"]
        assert args[args.index("--tls-dir") + 1] == "/etc/dualpath-mtls"
        assert "--insecure" not in args
        # Secret contents are not in the template: a renewal rolls nothing.
        assert not any("tls" in k for k in obj["spec"]["template"]["metadata"]["annotations"])


# --- status ----------------------------------------------------------------------------------------


READY = Rollout(desired=1, ready=1, updated=1, available=1, complete=True, exists=True)


def status_of(certs: CertificatesState) -> dict[str, tuple[str, str, str]]:
    obs = Observation(
        generation=1,
        prefill=READY,
        decode=READY,
        controller=READY,
        network=NetworkState(attachments_requested=0, nad_supported=False),
        monitoring=MonitoringState(True, False, False),
        certificates=certs,
    )
    st = compute_status(None, obs, "T")
    return {c.type: (c.status, c.reason, c.message) for c in st.conditions}


def test_certificates_condition_names_the_mode_and_never_skips_silently():
    base = CertificatesState(requested="auto", mode="operator", cert_manager_served=False)
    ok = status_of(
        CertificatesState(
            requested="auto",
            mode="operator",
            cert_manager_served=False,
            ca_not_after=NOW + 365 * DAY,
            next_renewal=NOW + 20 * DAY,
            superseded_tls_secret="ctl-tls",
        )
    )
    assert ok["CertificatesReady"][:2] == ("True", "OperatorIssued")
    assert "next renewal at" in ok["CertificatesReady"][2]
    assert "tlsSecretName (ctl-tls) is not used" in ok["CertificatesReady"][2]
    assert ok["Ready"][:2] == ("True", "AllComponentsReady")

    missing = status_of(CertificatesState("cert-manager", "cert-manager", False))
    assert missing["CertificatesReady"][:2] == ("False", "CertManagerCRDMissing")
    assert missing["Ready"][:2] == ("False", "CertificatesNotReady")
    assert missing["Degraded"][:2] == ("True", "CertificatesNotReady")

    issuing = status_of(CertificatesState("auto", "cert-manager", True, not_ready=("demo-ca",)))
    assert issuing["CertificatesReady"][:2] == ("False", "CertManagerIssuing")
    assert issuing["Degraded"][:2] == ("False", "AsExpected")  # progress, not a fault
    issued = status_of(CertificatesState("auto", "cert-manager", True))
    assert issued["CertificatesReady"][:2] == ("True", "CertManagerIssued")

    failed = status_of(CertificatesState("operator", "operator", False, error="boom"))
    assert failed["CertificatesReady"][:2] == ("False", "IssueFailed")
    assert failed["Degraded"][:2] == ("True", "CertificatesNotReady")
    assert base.mode == "operator"


# --- the issuance step against an in-memory API server ---------------------------------------------


class FakeKube:
    """Just the calls issuance.py makes, on a dict; resourceVersions are checked."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self._rv = 0

    def _store(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", f"uid-{meta['name']}")
        self.objects[(rt.kind, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, rt, namespace, name):
        obj = self.objects.get((rt.kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, rt, namespace, obj):
        if (rt.kind, namespace, obj["metadata"]["name"]) in self.objects:
            raise ApiError(409, "POST", "x", "{}")
        self.writes.append(("create", obj["metadata"]["name"]))
        return self._store(rt, obj)

    async def replace(self, rt, obj):
        meta = obj["metadata"]
        current = self.objects[(rt.kind, meta["namespace"], meta["name"])]
        if current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise ApiError(409, "PUT", "x", "{}")
        self.writes.append(("replace", meta["name"]))
        return self._store(rt, obj)

    async def apply(self, rt, obj):
        self.writes.append(("apply", obj["metadata"]["name"]))
        return self._store(rt, obj)

    async def list(self, rt, namespace, label_selector=""):
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == rt.kind]

    async def delete(self, rt, namespace, name, uid=None):
        self.writes.append(("delete", name))
        return self.objects.pop((rt.kind, namespace, name), None) is not None

    async def merge_patch(self, rt, namespace, name, patch, subresource=""):
        obj = self.objects[(rt.kind, namespace, name)]
        obj["metadata"].update(patch["metadata"])
        self.writes.append(("patch", name))
        return self._store(rt, obj)

    def secret(self, name: str) -> dict[str, bytes]:
        return secret_bytes(self.objects[("Secret", "ns1", name)])


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


async def test_issuance_creates_renews_and_rotates_writing_only_what_changed():
    kube, clock = FakeKube(), Clock()
    issuance = Issuance(kube, clock)  # type: ignore[arg-type]
    c = ctx()
    state, writes = await issuance.sync(c)
    assert (state.mode, state.error) == ("operator", "")
    assert writes.created == ["Secret/demo-ca", *(f"Secret/demo-{r}-tls" for r in LEAF_ROLES)]
    ca = kube.secret("demo-ca")
    for role in LEAF_ROLES:
        data = kube.secret(f"demo-{role}-tls")
        assert data["ca.crt"] == ca["ca.crt"] and signed_by(data["tls.crt"], ca["ca.crt"])
        identity = pki.identity_of(data["tls.crt"])
        assert identity == pki.Identity("ns1", "demo", role)
    assert state.next_renewal is not None and state.ca_not_after is not None

    kube.writes.clear()
    _, writes = await issuance.sync(c)  # level-based: nothing to do, nothing written
    assert kube.writes == [] and not (writes.created or writes.updated)

    # Near expiry (fake clock): every role certificate is re-issued, the CA kept.
    clock.now = NOW + 21 * DAY
    old_agent = kube.secret("demo-agent-tls")["tls.crt"]
    _, writes = await issuance.sync(c)
    assert writes.updated == [f"Secret/demo-{r}-tls" for r in LEAF_ROLES]
    assert kube.secret("demo-agent-tls")["tls.crt"] != old_agent
    assert kube.secret("demo-ca") == ca
    clock.now = NOW  # pki dates certificates by the real clock: back to it
    _, writes = await issuance.sync(c)
    assert not writes.updated

    # A deleted Secret comes back; an edited one (another role's certificate) is fixed.
    del kube.objects[("Secret", "ns1", "demo-router-tls")]
    kube.objects[("Secret", "ns1", "demo-engine-tls")]["data"]["tls.crt"] = base64.b64encode(
        kube.secret("demo-agent-tls")["tls.crt"]
    ).decode()
    _, writes = await issuance.sync(c)
    assert writes.created == ["Secret/demo-router-tls"]
    assert writes.updated == ["Secret/demo-engine-tls"]
    assert pki.identity_of(kube.secret("demo-engine-tls")["tls.crt"]).role == "engine"  # type: ignore[union-attr]

    # CA rotation: publish the successor (bundles grow, leaves kept), then promote it.
    clock.now = NOW + 250 * DAY
    _, writes = await issuance.sync(c)
    ca_obj = kube.objects[("Secret", "ns1", "demo-ca")]
    assert "dualpath.io/next-ca-published-at" in ca_obj["metadata"]["annotations"]
    bundle = kube.secret("demo-agent-tls")["ca.crt"]
    assert len(split_pem(bundle)) == 2
    clock.now += dt.timedelta(seconds=CA_PROPAGATION_SECONDS + 1)
    _, writes = await issuance.sync(c)
    new_ca = kube.secret("demo-ca")
    assert new_ca["ca.crt"] != ca["ca.crt"] and new_ca["retired.crt"] == ca["ca.crt"]
    for role in LEAF_ROLES:
        data = kube.secret(f"demo-{role}-tls")
        assert signed_by(data["tls.crt"], new_ca["ca.crt"])
        assert split_pem(data["ca.crt"]) == [new_ca["ca.crt"], ca["ca.crt"]]


async def test_issuance_refuses_a_ca_it_does_not_own_and_reports_it():
    kube = FakeKube()
    foreign = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "demo-ca", "namespace": "ns1"},
    }
    await kube.create(tls_secrets.SECRET, "ns1", foreign)
    state, writes = await Issuance(kube).sync(ctx())  # type: ignore[arg-type]
    assert "not owned" in state.error and not writes.created
    assert status_of(state)["CertificatesReady"][:2] == ("False", "IssueFailed")


async def test_cert_manager_mode_adopts_its_secrets_and_reads_readiness():
    kube = FakeKube()
    c = ctx(caps=CM)
    for obj in certmanager.certificates(c):
        kube._store(certmanager.CERTIFICATE, obj)
    # cert-manager wrote the agent's Secret (no owner reference); the operator's old CA
    # Secret from operator mode is still there.
    kube._store(
        tls_secrets.SECRET,
        {"metadata": {"name": "demo-agent-tls", "namespace": "ns1"}, "data": {}},
    )
    kube._store(tls_secrets.SECRET, tls_secrets.ca_secret(c, {"ca.crt": b"x"}))
    state, writes = await Issuance(kube).sync(c)  # type: ignore[arg-type]
    assert state.mode == "cert-manager" and len(state.not_ready) == 5
    assert writes.deleted == ["Secret/demo-ca"]
    refs = kube.objects[("Secret", "ns1", "demo-agent-tls")]["metadata"]["ownerReferences"]
    assert refs[0]["uid"] == "uid-1" and refs[0]["controller"]
    for obj in kube.objects.values():
        if obj.get("kind") == "Certificate":
            obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    state, _ = await Issuance(kube).sync(c)  # type: ignore[arg-type]
    assert state.not_ready == ()


def test_secrets_are_watched_and_cert_manager_crds_trigger_rediscovery():
    from dualpath_operator.handlers import ADDON_CRDS, CHILD_SELECTORS

    assert ("v1", "secrets") in CHILD_SELECTORS  # a deleted or edited one is re-issued at once
    assert {"certificates.cert-manager.io", "issuers.cert-manager.io"} <= ADDON_CRDS
