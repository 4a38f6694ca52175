"""Discovery decides PDB version and add-on support (both branches, no cluster needed)."""

from __future__ import annotations

from dualpath_operator.discovery import capabilities_from_groups
from dualpath_operator.reconciler import CapabilityCache


def groups(**versions: list[str]) -> dict:
    return {
        "kind": "APIGroupList",
        "groups": [
            {"name": name.replace("_", "."), "versions": [{"version": v} for v in vs]}
            for name, vs in versions.items()
        ],
    }


def test_kubernetes_1_20_has_only_policy_v1beta1_and_no_addons():
    caps = capabilities_from_groups(groups(policy=["v1beta1"], apps=["v1"]))
    assert caps.pdb_api_version == "policy/v1beta1"
    assert not caps.network_attachments and not caps.service_monitors


def test_kubernetes_1_28_prefers_policy_v1():
    caps = capabilities_from_groups(groups(policy=["v1", "v1beta1"]))
    assert caps.pdb_api_version == "policy/v1"
    assert capabilities_from_groups(groups(policy=["v1"])).pdb_api_version == "policy/v1"


def test_no_policy_group_means_no_pdb():
    assert capabilities_from_groups(groups(apps=["v1"])).pdb_api_version == ""


def test_addon_crds_detected_by_group_and_resource():
    g = groups(policy=["v1"], k8s_cni_cncf_io=["v1"], monitoring_coreos_com=["v1"])
    assert capabilities_from_groups(g).network_attachments
    assert capabilities_from_groups(g).service_monitors
    # The group exists but without the resource (another CRD of that group): not served.
    narrow = capabilities_from_groups(
        g, {"k8s.cni.cncf.io/v1": {"something-else"}, "monitoring.coreos.com/v1": {"podmonitors"}}
    )
    assert not narrow.network_attachments and not narrow.service_monitors
    exact = capabilities_from_groups(
        g,
        {
            "k8s.cni.cncf.io/v1": {"network-attachment-definitions"},
            "monitoring.coreos.com/v1": {"servicemonitors"},
        },
    )
    assert exact.network_attachments and exact.service_monitors


class _CountingDiscovery:
    """Answers discovery like an API server where nothing is installed, counting requests."""

    def __init__(self) -> None:
        self.requests = 0

    async def api_groups(self) -> dict:
        self.requests += 1
        return {"groups": []}

    async def group_version_resources(self, group_version: str) -> set[str]:
        return set()


async def test_capabilities_are_cached_but_rechecked_while_a_new_crd_settles():
    discovery = _CountingDiscovery()
    cache = CapabilityCache(discovery, ttl=300, settle_s=60)  # type: ignore[arg-type]
    await cache.get()
    await cache.get()
    assert discovery.requests == 1 and not cache.settling()
    cache.invalidate()  # an add-on CRD appeared: discovery may lag behind its event
    await cache.get()
    await cache.get()
    assert discovery.requests == 3 and cache.settling()
    quick = CapabilityCache(discovery, ttl=300, settle_s=0)  # type: ignore[arg-type]
    quick.invalidate()
    await quick.get()
    await quick.get()
    assert discovery.requests == 4
