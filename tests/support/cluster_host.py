"""Host plumbing of the local cluster (tests/support/localcluster.py): its child processes
(each in its own session, stopped by pid, recorded with start times so a later run can kill
what a crashed one left), the bridges, the iptables rules and chains, sysctls, cgroup roots
and the nodes' private mount namespaces. Needs root."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cluster_config import (
    BRIDGE_PREFIX,
    CNI_BIN_DIR,
    POD_CIDR,
    SERVICE_CIDR,
    NodePlan,
)

REPO = Path(__file__).resolve().parents[2]
K8S_WHAT = "kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
FORWARD_CHAIN = "DUALPATH-E2E-FWD"


class ClusterError(RuntimeError):
    """The local cluster could not start; the message names the failing part."""


def log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


def k8s_bin_dir() -> Path:
    """The five server binaries (built once, cached by hack/k8s-binaries.sh)."""
    env = dict(os.environ, DUALPATH_K8S_WHAT=K8S_WHAT)
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "k8s-binaries.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def missing_prerequisites() -> list[str]:
    """Why this machine cannot run the local cluster (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (bridges, iptables, containerd, kubelet)")
    for tool in ("containerd", "runc", "ctr", "dnsmasq", "iptables", "ip", "etcd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            problems.append(f"missing {tool} (run hack/e2e-deps.sh)")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        problems.append(f"missing CNI plugins in {CNI_BIN_DIR} (run hack/e2e-deps.sh)")
    if not Path("/sys/fs/cgroup/memory").is_dir():
        problems.append("kubelet 1.20 needs cgroup v1 hierarchies (/sys/fs/cgroup/memory)")
    return problems


# --- processes ---------------------------------------------------------------------------


@dataclass
class Processes:
    """Child processes by name, each in its own session, stopped by pid in reverse order."""

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_file = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (owned by the child)
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        log_file.close()

    def records(self) -> list[dict[str, Any]]:
        return [
            {"pid": p.pid, "start": process_start_time(p.pid)}
            for p in self.procs.values()
            if p.poll() is None
        ]

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ClusterError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, names: list[str] | None = None, timeout: float = 15.0) -> None:
        chosen = [n for n in reversed(list(self.procs)) if names is None or n in names]
        for name in chosen:
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in chosen:
            p = self.procs.pop(name)
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} ignored SIGTERM for {timeout:.0f}s: killing it")
                p.kill()
                p.wait()


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' when gone): with the pid, it
    identifies a process even after its pid was reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def kill_recorded(records: list[dict[str, Any]]) -> None:
    for rec in records:
        pid = int(rec["pid"])
        if rec.get("start") and process_start_time(pid) == rec["start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- host network: bridges, forwarding rule, sysctls -------------------------------------


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", name).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(value)


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["iptables", "-w", "30", *args], check=check)


def remove_forward_chain() -> None:
    while iptables("-D", "FORWARD", "-j", FORWARD_CHAIN, check=False).returncode == 0:
        pass
    iptables("-F", FORWARD_CHAIN, check=False)
    iptables("-X", FORWARD_CHAIN, check=False)


def install_forward_chain() -> None:
    """Pod traffic may go from one of our bridges to another, never out of the machine."""
    remove_forward_chain()
    iptables("-N", FORWARD_CHAIN)
    iptables(
        "-A", FORWARD_CHAIN, "-i", f"{BRIDGE_PREFIX}+", "-o", f"{BRIDGE_PREFIX}+", "-j", "ACCEPT"
    )
    iptables("-A", FORWARD_CHAIN, "-i", f"{BRIDGE_PREFIX}+", "-j", "DROP")
    iptables("-A", FORWARD_CHAIN, "-o", f"{BRIDGE_PREFIX}+", "-m", "conntrack", "--ctstate",
             "RELATED,ESTABLISHED", "-j", "ACCEPT")  # fmt: skip
    iptables("-A", FORWARD_CHAIN, "-o", f"{BRIDGE_PREFIX}+", "-s", POD_CIDR, "-j", "ACCEPT")
    iptables("-A", FORWARD_CHAIN, "-o", f"{BRIDGE_PREFIX}+", "-j", "DROP")
    iptables("-I", "FORWARD", "1", "-j", FORWARD_CHAIN)


IPTABLES_TABLES = ("filter", "nat", "mangle")
# Chains kubelet, kube-proxy and the CNI plugins create; removed on stop unless they were
# on the machine before this cluster started.
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-")


def owned_chains() -> set[tuple[str, str]]:
    """(table, chain) of every Kubernetes/CNI chain now present."""
    found = set()
    for table in IPTABLES_TABLES:
        for line in iptables("-t", table, "-S", check=False).stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "-N" and parts[1].startswith(OWNED_CHAIN_PREFIXES):
                found.add((table, parts[1]))
    return found


def remove_chains(chains: set[tuple[str, str]]) -> None:
    """Delete the rules that jump to `chains` (in any chain), then the chains themselves."""
    for table in IPTABLES_TABLES:
        mine = {c for t, c in chains if t == table}
        if not mine:
            continue
        for line in iptables("-t", table, "-S", check=False).stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in mine:
                iptables("-t", table, "-D", *parts[1:], check=False)
        for chain in mine:
            iptables("-t", table, "-F", chain, check=False)
        for chain in mine:
            iptables("-t", table, "-X", chain, check=False)


def delete_bridge(name: str) -> None:
    run(["ip", "link", "delete", name, "type", "bridge"], check=False)


def create_bridge(node: NodePlan) -> None:
    delete_bridge(node.bridge)  # a stale one from a crashed run
    run(["ip", "link", "add", "name", node.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{node.gateway}/{node.subnet.prefixlen}", "dev", node.bridge])
    run(["ip", "link", "set", node.bridge, "up"])


def check_subnets_free(nodes: list[NodePlan]) -> None:
    """Refuse to start when the machine already routes our pod or service ranges."""
    routes = run(["ip", "-4", "route", "show"]).stdout.splitlines()
    ours = [ipaddress.ip_network(POD_CIDR), ipaddress.ip_network(SERVICE_CIDR)]
    bridges = {n.bridge for n in nodes}
    for line in routes:
        parts = line.split()
        if not parts or parts[0] == "default":
            continue
        dev = parts[parts.index("dev") + 1] if "dev" in parts else ""
        if dev in bridges:
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(parts[0], strict=False)
            for mine in ours:
                if net.overlaps(mine):
                    raise ClusterError(f"route {line!r} overlaps {mine}: pick other ranges")


# --- cgroups and mounts ------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]


def prepare_cgroup_root(root: str) -> None:
    """kubelet wants its --cgroup-root to exist in every hierarchy; cpuset needs its cpus
    and mems copied from the parent or no task can join it."""
    for h in cgroup_hierarchies():
        d = h / root.lstrip("/")
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def remove_cgroup_tree(root: str) -> None:
    for h in cgroup_hierarchies():
        top = h / root.lstrip("/")
        if not top.exists():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


# Host paths every kubelet/containerd uses whatever its flags say (kubelet's pod logs, the
# container-log symlinks, runc's state, CNI's network namespaces). Each node gets its own
# copy, bind-mounted in the node's private mount namespace, so the two nodes never see (or
# garbage-collect) each other's files and nothing lands in the machine's own directories.
NODE_PRIVATE_DIRS = ("/var/log/pods", "/var/log/containers", "/run/containerd", "/run/netns")


def mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def pids_in_mount_namespace(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.append(int(entry.name))
    return pids


def kill_mount_namespace(ns: str, timeout: float = 15.0) -> None:
    """SIGKILL every process in a node's private mount namespace (the node's containerd,
    shims and containers: all started by this harness) until none is left. The namespace,
    its mounts and the pods' network namespaces disappear with the last one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in pids_in_mount_namespace(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    log(f"processes left in mount namespace {ns}: {pids_in_mount_namespace(ns)}")
