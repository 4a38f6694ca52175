"""The local e2e cluster's pure parts: node addressing, containerd/CNI/kubelet configs and
the cluster-DNS hosts file (tests/support/cluster_config.py). The cluster itself runs in the
e2e tier."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import yaml

from tests.support import cluster_config as lc


def test_nodes_get_disjoint_subnets_on_their_own_bridges() -> None:
    nodes = lc.default_nodes()
    assert [n.role for n in nodes] == ["prefill", "decode"]
    pod_cidr = ipaddress.ip_network(lc.POD_CIDR)
    assert not nodes[0].subnet.overlaps(nodes[1].subnet)
    for n in nodes:
        assert n.subnet.subnet_of(pod_cidr)
        assert ipaddress.ip_address(n.gateway) in n.subnet
        assert n.bridge.startswith(lc.BRIDGE_PREFIX) and len(n.bridge) <= 15  # IFNAMSIZ
    assert len({n.name for n in nodes}) == len({n.cgroup_root for n in nodes}) == 2
    assert not pod_cidr.overlaps(ipaddress.ip_network(lc.SERVICE_CIDR))


def test_containerd_config_isolates_each_node(tmp_path: Path) -> None:
    configs = [
        tomllib.loads(lc.containerd_config(n, tmp_path / n.name)) for n in lc.default_nodes()
    ]
    for cfg in configs:
        cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
        # The settings without which runc fails on this kind of machine (local-cluster.md).
        assert cri["enable_unprivileged_ports"] is False
        assert cri["enable_unprivileged_icmp"] is False
        assert cri["restrict_oom_score_adj"] is True and cri["disable_apparmor"] is True
        assert cri["sandbox_image"] == lc.PAUSE_REF
        assert cri["stream_server_address"] == "127.0.0.1"
        assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    for key in ("root", "state"):
        assert configs[0][key] != configs[1][key]
    assert configs[0]["grpc"]["address"] != configs[1]["grpc"]["address"]
    cni_dirs = {c["plugins"]["io.containerd.grpc.v1.cri"]["cni"]["conf_dir"] for c in configs}
    assert len(cni_dirs) == 2


def test_cni_conflist_keeps_pods_inside(tmp_path: Path) -> None:
    node = lc.default_nodes()[1]
    conf = lc.cni_conflist(node, tmp_path / "ipam")
    bridge = conf["plugins"][0]
    assert bridge["bridge"] == node.bridge and bridge["isGateway"] is True
    assert bridge["ipMasq"] is False  # no SNAT to the machine's interface
    assert bridge["ipam"]["ranges"] == [[{"subnet": str(node.subnet), "gateway": node.gateway}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_host_ports_answer_only_on_their_own_nodes_address(tmp_path: Path) -> None:
    # Both nodes share the machine's network namespace: without a destination condition,
    # portmap's DNAT (any local address) would send a client dialling node 1's IP to a
    # hostPort pod of node 0 (an engine would reach the other node's agent).
    nodes = lc.default_nodes()
    conditions = []
    for node in nodes:
        plugins = lc.cni_conflist(node, tmp_path / node.name)["plugins"]
        [portmap] = [p for p in plugins if p["type"] == "portmap"]
        assert portmap["capabilities"] == {"portMappings": True}
        # The node's InternalIP (kubelet --node-ip), which pods see as status.hostIP.
        assert portmap["conditionsV4"] == ["-d", node.gateway]
        conditions.append(tuple(portmap["conditionsV4"]))
    assert len(set(conditions)) == len(nodes)


def test_kubelet_serves_on_its_bridge_and_uses_cluster_dns(tmp_path: Path) -> None:
    nodes = lc.default_nodes()
    dns = lc.dns_address(nodes)
    cfgs = [
        json.loads(lc.kubelet_config(n, 10248 + i, dns, tmp_path / "r"))
        for i, n in enumerate(nodes)
    ]
    for node, cfg in zip(nodes, cfgs, strict=True):
        assert cfg["address"] == node.gateway and cfg["readOnlyPort"] == 0
        assert cfg["healthzBindAddress"] == "127.0.0.1"
        assert cfg["clusterDNS"] == [dns] and cfg["clusterDomain"] == "cluster.local"
        assert cfg["cgroupRoot"] == node.cgroup_root and cfg["cgroupDriver"] == "cgroupfs"
        # No registry: image GC must never delete the imported images.
        assert cfg["imageGCHighThresholdPercent"] == 100
    assert cfgs[0]["healthzPort"] != cfgs[1]["healthzPort"]


def test_dns_hosts_cover_cluster_ip_and_headless_services() -> None:
    services = [
        {"metadata": {"name": "web", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.10"}},
        {"metadata": {"name": "agents", "namespace": "b"}, "spec": {"clusterIP": "None"}},
        {"metadata": {"name": "ext", "namespace": "a"}, "spec": {"type": "ExternalName"}},
    ]
    endpoints = [
        {
            "metadata": {"name": "agents", "namespace": "b"},
            "subsets": [
                {"addresses": [{"ip": "10.244.1.5", "hostname": "agent-0"}, {"ip": "10.244.0.7"}]}
            ],
        },
        {
            "metadata": {"name": "web", "namespace": "a"},
            "subsets": [{"addresses": [{"ip": "10.244.0.9"}]}],
        },
    ]
    lines = lc.dns_hosts(services, endpoints).splitlines()
    assert "10.96.0.10 web.a.svc.cluster.local" in lines
    assert "10.244.1.5 agents.b.svc.cluster.local" in lines
    assert "10.244.0.7 agents.b.svc.cluster.local" in lines
    assert "10.244.1.5 agent-0.agents.b.svc.cluster.local" in lines
    # A Service with a ClusterIP resolves to it, never to its pods.
    assert not any(line.startswith("10.244.0.9") for line in lines)
    assert len(lines) == 4


def test_kubeconfig_verifies_the_api_server(tmp_path: Path) -> None:
    cfg = yaml.safe_load(lc.kubeconfig_text("https://10.244.0.1:6443", "tok", tmp_path / "ca.crt"))
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == "https://10.244.0.1:6443"
    assert cluster["certificate-authority"] == str(tmp_path / "ca.crt")
    assert "insecure-skip-tls-verify" not in cluster
    assert cfg["users"][0]["user"]["token"] == "tok"


def test_node_images_parses_ctr_listing() -> None:
    listing = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "docker.io/dualpath/dualpath:dev-1 application/vnd.oci.image.manifest.v1+json "
        "sha256:aaa 800.0 MiB linux/amd64 io.cri-containerd.image=managed\n"
        "docker.io/dualpath/pause:1 application/vnd.oci.image.manifest.v1+json "
        "sha256:bbb 600.0 KiB linux/amd64 -\n"
    )
    assert lc.node_images(listing) == {
        "docker.io/dualpath/dualpath:dev-1": "sha256:aaa",
        "docker.io/dualpath/pause:1": "sha256:bbb",
    }
    assert lc.node_images("REF TYPE DIGEST SIZE PLATFORMS LABELS\n") == {}


def test_archive_reference_reads_the_oci_index(tmp_path: Path) -> None:
    import io
    import tarfile

    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "digest": "sha256:ccc",
                "annotations": {"org.opencontainers.image.ref.name": "docker.io/x/y:z"},
            }
        ],
    }
    archive = tmp_path / "img.oci.tar"
    with tarfile.open(archive, "w") as tar:
        data = json.dumps(index).encode()
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert lc.archive_reference(archive) == ("docker.io/x/y:z", "sha256:ccc")


def test_containerd_root_can_live_in_a_cache(tmp_path: Path) -> None:
    node = lc.default_nodes()[0]
    cfg = tomllib.loads(lc.containerd_config(node, tmp_path / "run", tmp_path / "cache"))
    assert cfg["root"] == str(tmp_path / "cache")
    assert cfg["state"].startswith(str(tmp_path / "run"))
