"""Discovery decides PDB version and add-on support (both branches, no cluster needed)."""

from __future__ import annotations

from dualpath_operator.discovery import capabilities_from_groups


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
