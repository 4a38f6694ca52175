"""The pure parts of the local cluster (tests/support/localcluster.py): the nodes' names
and addresses, and the config files it writes (containerd, CNI, kubelet, kubeconfig, the
cluster-DNS hosts file). No process and no host change here: unit-tested on any machine in
tests/unit/test_localcluster_config.py."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE_PREFIX = "dpnode"  # bridges dpnode0, dpnode1: names of this harness only
PAUSE_REF = "docker.io/dualpath/pause:1"
ROLE_LABEL = "dualpath.io/role"
CNI_BIN_DIR = "/usr/lib/cni"


@dataclass(frozen=True)
class NodePlan:
    """One node's names and addresses (pure data, derived from its index)."""

    index: int
    role: str

    @property
    def name(self) -> str:
        return f"dp-{self.role}-{self.index}"

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return list(ipaddress.ip_network(POD_CIDR).subnets(new_prefix=24))[self.index]

    @property
    def gateway(self) -> str:
        """The bridge's address: the node's InternalIP and the pods' default gateway."""
        return str(self.subnet.network_address + 1)

    @property
    def cgroup_root(self) -> str:
        return f"/dualpath-{self.name}"


def default_nodes() -> list[NodePlan]:
    return [NodePlan(0, "prefill"), NodePlan(1, "decode")]


def dns_address(nodes: list[NodePlan]) -> str:
    return nodes[0].gateway


def containerd_config(node: NodePlan, wd: Path, root: Path | None = None) -> str:
    """containerd config (version 2) with its own root/state/socket and CNI conf dir.
    The unprivileged-port/icmp, OOM and AppArmor settings avoid runc's "can't get final
    child's PID from pipe" on this kind of machine (see local-cluster.md). `root` (images,
    snapshots) may live in a cache that outlives the cluster; the rest is per run."""
    return f"""version = 2
root = "{root or wd / "root"}"
state = "{wd / "state"}"
oom_score = 0
[grpc]
  address = "{wd / "containerd.sock"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{wd / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_REF}"
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{wd / "cni"}"
    max_conf_num = 1
"""


def cni_conflist(node: NodePlan, ipam_dir: Path) -> dict[str, Any]:
    """Bridge + host-local (one /24 per node) + portmap. No ipMasq: pods have no way out
    of the machine, only to each other, the nodes and the cluster's services.

    All nodes share the machine's network namespace, and portmap's DNAT rule matches any
    local destination address by default (`-m addrtype --dst-type LOCAL`): a hostPort of
    node 1 would then also answer on node 0's address, and whichever node's rule comes
    first in the shared chain wins. `conditionsV4` adds `-d <this node's IP>` to the
    node's rules, so a hostPort answers on its own node's InternalIP only, as on separate
    machines (an engine dialling $(HOST_IP):port reaches its own node's agent). Debian's
    plugins (1.1.1) support it."""
    return {
        "cniVersion": "0.4.0",
        "name": f"dualpath-{node.name}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(node.subnet), "gateway": node.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {
                "type": "portmap",
                "capabilities": {"portMappings": True},
                "conditionsV4": ["-d", node.gateway],
            },
        ],
    }


def kubelet_config(node: NodePlan, healthz_port: int, dns: str, resolv_conf: Path) -> str:
    """KubeletConfiguration: serving on the node's bridge address, its own cgroup root,
    anonymous + AlwaysAllow (a test node), and no image GC or eviction that could drop
    the imported images (there is no registry to pull them back from)."""
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.gateway,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failSwapOn": False,
        "clusterDNS": [dns],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": False,
        "maxPods": 40,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }
    return json.dumps(cfg, indent=2)


def kubeconfig_text(server: str, token: str, ca_file: Path) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: dualpath-local
  cluster:
    server: {server}
    certificate-authority: {ca_file}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: dualpath-local
  context: {{cluster: dualpath-local, user: admin}}
current-context: dualpath-local
"""


def dns_hosts(services: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> str:
    """The dnsmasq hosts file: `<ip> <svc>.<ns>.svc.<domain>` for each Service with a
    ClusterIP, and each ready endpoint address for headless Services."""
    lines = []
    headless = set()
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec", {})
        fqdn = f"{meta['name']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN}"
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            lines.append(f"{ip} {fqdn}")
        elif ip == "None":
            headless.add((meta["namespace"], meta["name"]))
    for ep in endpoints:
        meta = ep["metadata"]
        if (meta["namespace"], meta["name"]) not in headless:
            continue
        fqdn = f"{meta['name']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN}"
        for subset in ep.get("subsets") or []:
            for addr in subset.get("addresses") or []:
                lines.append(f"{addr['ip']} {fqdn}")
                if addr.get("hostname"):
                    lines.append(f"{addr['ip']} {addr['hostname']}.{fqdn}")
    return "\n".join(sorted(lines)) + "\n"


def archive_reference(archive: Path) -> tuple[str, str]:
    """(image reference, manifest digest) of a single-image OCI archive."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, f"{archive}: no index.json"
        index = json.load(member)
    manifest = index["manifests"][0]
    return manifest["annotations"]["org.opencontainers.image.ref.name"], manifest["digest"]


def node_images(ctr_images_ls: str) -> dict[str, str]:
    """{reference: digest} from `ctr images ls` output (REF TYPE DIGEST ...)."""
    images = {}
    for line in ctr_images_ls.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("sha256:"):
            images[parts[0]] = parts[2]
    return images
