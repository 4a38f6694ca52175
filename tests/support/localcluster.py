"""A real two-node Kubernetes cluster on this machine, built from Debian packages.

The `local` provider of the e2e suite: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kube-proxy (iptables) and dnsmasq as cluster DNS, plus two nodes, each one
containerd (own root, state, socket, CNI config) and one kubelet (own root dir, cgroup root
and serving address). Each node has its own Linux bridge and pod subnet; the bridge's gateway
address is the node's InternalIP (kubelet --node-ip) and the API server binds to node 0's.
Nothing listens on, or routes to, the machine's own interface: a FORWARD rule drops traffic
from the pod bridges to any other interface. Nodes are labelled dualpath.io/role=prefill and
=decode. Recipe and pitfalls: ../shared/notes/local-cluster.md.

One local cluster runs per machine at a time (the bridges, kube-proxy's iptables chains and
the pod subnets are host-wide); a second one waits for the first (a file lock). Every
process is started here and stopped by its own pid; host settings changed on the way
(sysctls, iptables, bridges, cgroups, mounts) are put back on stop, also after a crash of an
earlier run (stale bridges and chains are removed first).

Needs root and the packages of hack/e2e-deps.sh. By hand:
`sudo .venv/bin/python -m tests.support.localcluster` prints `export KUBECONFIG=...`; Ctrl-C
stops it.

This module is the orchestration (start, stop, the DNS updater); the pure config renderers
are in cluster_config.py and the host plumbing (processes, network, cgroups, mounts) in
cluster_host.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cluster_config import (
    CLUSTER_DOMAIN,
    PAUSE_REF,
    POD_CIDR,
    ROLE_LABEL,
    SERVICE_CIDR,
    NodePlan,
    archive_reference,
    cni_conflist,
    containerd_config,
    default_nodes,
    dns_address,
    dns_hosts,
    kubeconfig_text,
    kubelet_config,
    node_images,
)
from tests.support.cluster_host import (
    NODE_PRIVATE_DIRS,
    ClusterError,
    Processes,
    check_subnets_free,
    create_bridge,
    delete_bridge,
    install_forward_chain,
    k8s_bin_dir,
    kill_mount_namespace,
    kill_recorded,
    log,
    missing_prerequisites,
    mount_namespace,
    owned_chains,
    prepare_cgroup_root,
    read_sysctl,
    remove_cgroup_tree,
    remove_chains,
    remove_forward_chain,
    run,
    write_sysctl,
)
from tests.support.interrupts import run_until_stopped, stop_on_signals
from tests.support.wait import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
LOCK_FILE = Path("/tmp/dualpath-localcluster.lock")
# What the running cluster started (pids with start times, mount namespaces, workdir), so a
# run that was killed hard is cleaned up by the next one, still by pid.
STATE_FILE = Path("/tmp/dualpath-localcluster.state.json")
# Each node's containerd root (unpacked images) is kept here between runs, so a rerun only
# imports the layers that changed; DUALPATH_E2E_NODE_CACHE="" keeps it in the run's dir.
NODE_CACHE = Path(
    os.environ.get("DUALPATH_E2E_NODE_CACHE", Path.home() / ".cache" / "dualpath" / "e2e-nodes")
)
# Host settings the cluster needs (kube-proxy sets route_localnet itself); restored on stop.
SYSCTLS = {"net/ipv4/ip_forward": "1"}
RESTORED_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet")


# --- cluster DNS -------------------------------------------------------------------------


class DnsUpdater:
    """Regenerates dnsmasq's hosts file from the cluster's Services (polling once a
    second) and tells dnsmasq to reread it (SIGHUP)."""

    def __init__(self, kubeconfig: Path, hosts_file: Path, pid: Callable[[], int | None]) -> None:
        self._kubeconfig = kubeconfig
        self._hosts = hosts_file
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dns-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(config_file=str(self._kubeconfig)))
        last = ""
        while not self._stop.is_set():
            try:
                svcs = api.list_service_for_all_namespaces(_preload_content=False)
                eps = api.list_endpoints_for_all_namespaces(_preload_content=False)
                text = dns_hosts(json.loads(svcs.data)["items"], json.loads(eps.data)["items"])
                if text != last:
                    self._hosts.write_text(text)
                    pid = self._pid()
                    if pid:
                        os.kill(pid, signal.SIGHUP)
                    last = text
            except Exception as exc:  # the API server may be restarting; try again
                log(f"dns updater: {exc}")
            self._stop.wait(1.0)


# --- the cluster -------------------------------------------------------------------------


@dataclass
class LocalCluster:
    workdir: Path
    bin_dir: Path
    pause_archive: Path
    nodes: list[NodePlan] = field(default_factory=default_nodes)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    api_port: int = 0
    node_cache: Path | None = field(default_factory=lambda: NODE_CACHE if str(NODE_CACHE) else None)
    procs: Processes = field(init=False)
    _saved_sysctls: dict[str, str] = field(default_factory=dict)
    _node_ns: dict[str, str] = field(default_factory=dict)  # node name -> mnt namespace id
    _created_dirs: list[Path] = field(default_factory=list)
    _chains_before: set[tuple[str, str]] = field(default_factory=set)
    _dns: DnsUpdater | None = None
    _lock_fd: int | None = None

    def __post_init__(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.workdir / "logs")

    # public surface used by the e2e suite
    @property
    def server(self) -> str:
        return f"https://{self.nodes[0].gateway}:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def node_names(self, role: str | None = None) -> list[str]:
        return [n.name for n in self.nodes if role is None or n.role == role]

    def load_image(self, archive: Path) -> None:
        """Import an OCI archive into every node's containerd (there is no registry), the
        nodes in parallel (unpacking is most of the time). A node that already holds the
        image (same reference, same manifest digest) skips it; older tags of the same
        repository are removed (containerd then collects their unshared layers)."""

        def one(node: NodePlan) -> None:
            t0 = time.monotonic()
            imported = self._import(self._node_socket(node), archive)
            what = "imported" if imported else "already held"
            log(f"{archive.name} on {node.name}: {what} ({time.monotonic() - t0:.1f}s)")

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(one, self.nodes))

    # lifecycle
    def start(self, timeout: float = 180.0) -> LocalCluster:
        t0 = time.monotonic()
        self._take_machine_lock()
        self._clean_stale_host_state()
        check_subnets_free(self.nodes)
        self._chains_before = owned_chains()
        for name in RESTORED_SYSCTLS:
            self._saved_sysctls[name] = read_sysctl(name)
        self._save_state()  # before the first change to the machine
        for name, value in SYSCTLS.items():
            write_sysctl(name, value)
        for node in self.nodes:
            create_bridge(node)
        install_forward_chain()
        self._start_control_plane(timeout)
        self._save_state()
        self._start_dns()
        for node in self.nodes:
            self._start_node(node)
            self._save_state()
        self._start_kube_proxy()
        self._save_state()
        self._wait_nodes_ready(timeout)
        log(f"cluster up in {time.monotonic() - t0:.1f}s: KUBECONFIG={self.kubeconfig}")
        return self

    def stop(self) -> None:
        """Stop everything this cluster started and put the host back as it was."""
        t0 = time.monotonic()
        if self._dns:
            self._dns.stop()
        # Kubelets first (so nothing restarts containers), then everything in each node's
        # mount namespace (containerd, shims, containers), then the control plane.
        phases = [time.monotonic()]
        self.procs.stop([n for n in self.procs.procs if n.startswith("kubelet")])
        if self.node_cache is not None:
            for node in self.nodes:
                if node.name in self._node_ns:
                    self._remove_node_containers(node)
        phases.append(time.monotonic())
        for ns in self._node_ns.values():
            kill_mount_namespace(ns)
        phases.append(time.monotonic())
        self.procs.stop()
        phases.append(time.monotonic())
        log("stop: kubelets+containers {:.1f}s, node namespaces {:.1f}s, control plane {:.1f}s".format(
            *(b - a for a, b in itertools.pairwise(phases))))  # fmt: skip
        kube_proxy = self.bin_dir / "kube-proxy"
        run([str(kube_proxy), "--cleanup", "--proxy-mode=iptables"], check=False)
        remove_chains(owned_chains() - self._chains_before)
        for d in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        for node in self.nodes:
            remove_cgroup_tree(node.cgroup_root)
            delete_bridge(node.bridge)
        remove_forward_chain()
        for name, value in self._saved_sysctls.items():
            with contextlib.suppress(OSError):
                write_sysctl(name, value)
        STATE_FILE.unlink(missing_ok=True)
        self._release_machine_lock()
        log(f"cluster stopped in {time.monotonic() - t0:.1f}s")

    # --- steps --------------------------------------------------------------------------

    def _take_machine_lock(self, timeout: float = 1800.0) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ClusterError(f"another local cluster holds {LOCK_FILE}") from None
                time.sleep(1)
        self._lock_fd = fd

    def _release_machine_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _save_state(self) -> None:
        state = {
            "workdir": str(self.workdir),
            "processes": self.procs.records(),
            "mount_namespaces": list(self._node_ns.values()),
            "created_dirs": [str(d) for d in self._created_dirs],
            "sysctls": self._saved_sysctls,
            "chains_before": sorted(self._chains_before),
        }
        STATE_FILE.write_text(json.dumps(state))

    def _clean_stale_host_state(self) -> None:
        """A run that was killed hard leaves its processes, bridges, chains and cgroups:
        stop and drop them (we hold the machine lock, so nothing else uses them)."""
        if STATE_FILE.exists():
            with contextlib.suppress(ValueError, OSError):
                stale = json.loads(STATE_FILE.read_text())
                log(f"cleaning up after an earlier cluster in {stale.get('workdir')}")
                kill_recorded(stale.get("processes", []))
                for ns in stale.get("mount_namespaces", []):
                    kill_mount_namespace(ns)
                shutil.rmtree(stale.get("workdir", ""), ignore_errors=True)
                for d in reversed(stale.get("created_dirs", [])):
                    with contextlib.suppress(OSError):
                        Path(d).rmdir()
                before = {(t, c) for t, c in stale.get("chains_before", [])}
                remove_chains(owned_chains() - before)
                for name, value in stale.get("sysctls", {}).items():
                    with contextlib.suppress(OSError):
                        write_sysctl(name, value)
            STATE_FILE.unlink(missing_ok=True)
        for node in self.nodes:
            delete_bridge(node.bridge)
            remove_cgroup_tree(node.cgroup_root)
        remove_forward_chain()
        run([str(self.bin_dir / "kube-proxy"), "--cleanup", "--proxy-mode=iptables"], check=False)

    def _node_dir(self, node: NodePlan) -> Path:
        return self.workdir / node.name

    def _start_control_plane(self, timeout: float) -> None:
        wd = self.workdir
        certs = wd / "certs"
        certs.mkdir(exist_ok=True)
        sa_key = wd / "sa.key"
        run(["openssl", "genrsa", "-out", str(sa_key), "2048"])
        run(["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(wd / "sa.pub")])
        (wd / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        etcd_port, peer_port = free_port(), free_port()
        api_host = self.nodes[0].gateway
        self.api_port = self.api_port or free_port(api_host)
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        self.procs.spawn(
            "etcd",
            [etcd, "--name=dp", f"--data-dir={wd / 'etcd'}",
             f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
             f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
             f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
             f"--initial-cluster=dp=http://127.0.0.1:{peer_port}",
             "--unsafe-no-fsync"],
        )  # fmt: skip
        self.procs.spawn(
            "kube-apiserver",
            [str(self.bin_dir / "kube-apiserver"),
             f"--etcd-servers=http://127.0.0.1:{etcd_port}",
             f"--bind-address={api_host}", f"--advertise-address={api_host}",
             f"--secure-port={self.api_port}", "--insecure-port=0",
             f"--cert-dir={certs}", f"--token-auth-file={wd / 'tokens.csv'}",
             "--authorization-mode=Node,RBAC",
             f"--service-account-key-file={wd / 'sa.pub'}",
             f"--service-account-signing-key-file={sa_key}",
             "--service-account-issuer=https://kubernetes.default.svc",
             f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--kubelet-preferred-address-types=InternalIP",
             "--allow-privileged=true", "--profiling=false",
             "--enable-admission-plugins=NodeRestriction"],
        )  # fmt: skip
        wait_for("kube-apiserver /readyz", self._api_ready, timeout, self.procs.check_alive)
        # The API server made its self-signed serving cert (valid for the bridge address and
        # the `kubernetes` Service) on start: clients verify against it.
        self.kubeconfig.write_text(
            kubeconfig_text(self.server, self.token, certs / "apiserver.crt")
        )
        self.procs.spawn(
            "kube-controller-manager",
            [str(self.bin_dir / "kube-controller-manager"),
             f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
             "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--port=0",
             f"--service-account-private-key-file={sa_key}",
             f"--root-ca-file={certs / 'apiserver.crt'}",
             f"--cluster-cidr={POD_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--use-service-account-credentials=false",
             "--concurrent-gc-syncs=5", "--node-monitor-grace-period=20s",
             "--pod-eviction-timeout=30s"],
        )  # fmt: skip
        self.procs.spawn(
            "kube-scheduler",
            [str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={self.kubeconfig}",
             "--leader-elect=false", "--bind-address=127.0.0.1",
             f"--secure-port={free_port()}", "--port=0"],
        )  # fmt: skip

    def _api_ready(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    def _start_dns(self) -> None:
        d = self.workdir / "dns"
        d.mkdir(exist_ok=True)
        hosts = d / "hosts"
        hosts.write_text("")
        self.procs.spawn(
            "dnsmasq",
            ["dnsmasq", "--keep-in-foreground", "--log-facility=-",
             f"--listen-address={dns_address(self.nodes)}", "--bind-interfaces",
             "--port=53", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
             f"--local=/{CLUSTER_DOMAIN}/", f"--pid-file={d / 'dnsmasq.pid'}",
             "--user=root", "--group=root", "--cache-size=0"],
        )  # fmt: skip
        proc = self.procs.procs["dnsmasq"]
        self._dns = DnsUpdater(self.kubeconfig, hosts, lambda: proc.pid)
        self._dns.start()
        # The node's resolv.conf for pods with dnsPolicy Default: our DNS only.
        (d / "resolv.conf").write_text(f"nameserver {dns_address(self.nodes)}\n")

    def _start_node(self, node: NodePlan) -> None:
        nd = self._node_dir(node)
        cd = nd / "containerd"
        (cd / "cni").mkdir(parents=True, exist_ok=True)
        root = None
        if self.node_cache is not None:
            root = self.node_cache / node.name / "containerd-root"
            root.mkdir(parents=True, exist_ok=True)
        (cd / "config.toml").write_text(containerd_config(node, cd, root))
        conflist = cni_conflist(node, nd / "cni-ipam")
        (cd / "cni" / "10-dualpath.conflist").write_text(json.dumps(conflist, indent=2))
        sock = cd / "containerd.sock"
        enter = self._node_mount_namespace(node)
        self.procs.spawn(
            f"containerd-{node.name}", [*enter, "containerd", "--config", str(cd / "config.toml")]
        )
        wait_for(f"containerd of {node.name}", sock.exists, 30, self.procs.check_alive)
        self._import(sock, self.pause_archive)
        prepare_cgroup_root(node.cgroup_root)
        kd = nd / "kubelet"
        kd.mkdir(exist_ok=True)
        healthz = free_port()
        cfg = kubelet_config(
            node, healthz, dns_address(self.nodes), self.workdir / "dns" / "resolv.conf"
        )
        (kd / "config.json").write_text(cfg)
        self.procs.spawn(
            f"kubelet-{node.name}",
            [*enter, str(self.bin_dir / "kubelet"), f"--config={kd / 'config.json'}",
             f"--kubeconfig={self.kubeconfig}", "--container-runtime=remote",
             f"--container-runtime-endpoint=unix://{sock}",
             f"--hostname-override={node.name}", f"--node-ip={node.gateway}",
             f"--root-dir={kd / 'root'}", f"--cert-dir={kd / 'pki'}",
             f"--volume-plugin-dir={kd / 'volume-plugins'}",
             f"--node-labels={ROLE_LABEL}={node.role}", "--register-node=true",
             f"--pod-infra-container-image={PAUSE_REF}", "--v=1"],
        )  # fmt: skip

    def _node_mount_namespace(self, node: NodePlan) -> list[str]:
        """Start the node's mount-namespace holder (a `sleep` in a private mount namespace),
        bind the node's own copies of NODE_PRIVATE_DIRS there, and return the nsenter
        prefix that runs a command inside it."""
        nd = self._node_dir(node)
        name = f"mntns-{node.name}"
        self.procs.spawn(
            name, ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"]
        )
        pid = self.procs.procs[name].pid
        host_ns = mount_namespace(os.getpid())
        wait_for(f"{name}", lambda: mount_namespace(pid) != host_ns, 10, self.procs.check_alive)
        self._node_ns[node.name] = mount_namespace(pid)
        enter = ["nsenter", f"--target={pid}", "--mount", "--"]
        for target in NODE_PRIVATE_DIRS:
            self._ensure_dir(Path(target))
            source = nd / "private" / target.strip("/").replace("/", "-")
            source.mkdir(parents=True, exist_ok=True)
            run([*enter, "mount", "--bind", str(source), target])
        return enter

    def _ensure_dir(self, path: Path) -> None:
        """Create a mount point (and parents) that the machine lacks; removed on stop."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._created_dirs.append(d)

    def _node_socket(self, node: NodePlan) -> Path:
        return self._node_dir(node) / "containerd" / "containerd.sock"

    def _import(self, sock: Path, archive: Path) -> bool:
        """Import `archive` unless the node holds it already; True when it imported."""
        ref, digest = archive_reference(archive)
        ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
        images = node_images(run([*ctr, "images", "ls"], check=False).stdout)
        imported = images.get(ref) != digest
        if imported:
            out = run([*ctr, "images", "import", str(archive)], check=False)
            if out.returncode != 0:
                raise ClusterError(f"ctr import {archive} failed: {out.stderr}")
        repository = ref.rsplit(":", 1)[0]
        stale = [r for r in images if r != ref and r.rsplit(":", 1)[0] == repository]
        if stale:
            run([*ctr, "images", "rm", *stale], check=False)
        return imported

    def _remove_node_containers(self, node: NodePlan) -> None:
        """Kill and delete every container of a node through its containerd, so the cached
        root holds images only (the next run's kubelet finds no stale sandboxes)."""
        ctr = ["ctr", "--address", str(self._node_socket(node)), "-n", "k8s.io"]
        containers = run([*ctr, "containers", "ls", "-q"], check=False).stdout.split()
        for cid in containers:
            run([*ctr, "tasks", "rm", "-f", cid], check=False)
        if containers:
            run([*ctr, "containers", "rm", *containers], check=False)

    def _start_kube_proxy(self) -> None:
        # One kube-proxy for both nodes: they share the machine's network namespace.
        self.procs.spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--kubeconfig={self.kubeconfig}",
             "--proxy-mode=iptables", f"--hostname-override={self.nodes[0].name}",
             f"--cluster-cidr={POD_CIDR}", "--masquerade-all",
             "--conntrack-max-per-core=0", f"--nodeport-addresses={POD_CIDR}",
             f"--metrics-bind-address=127.0.0.1:{free_port()}",
             f"--healthz-bind-address=127.0.0.1:{free_port()}", "--v=1"],
        )  # fmt: skip

    def _wait_nodes_ready(self, timeout: float) -> None:
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

        def all_ready() -> bool:
            nodes = api.list_node().items
            ready = {
                n.metadata.name
                for n in nodes
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            }
            return ready >= set(self.node_names())

        wait_for("both nodes Ready", all_ready, timeout, self.procs.check_alive)


@contextlib.contextmanager
def local_cluster(pause_archive: Path, workdir: Path | None = None) -> Iterator[LocalCluster]:
    problems = missing_prerequisites()
    if problems:
        raise ClusterError("; ".join(problems))
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="dualpath-cluster-")
        workdir = Path(tmp)
    cluster = LocalCluster(workdir=workdir, bin_dir=k8s_bin_dir(), pause_archive=pause_archive)
    # SIGINT/SIGTERM (also to a pytest running the e2e suite) unwind through `stop`; a
    # second one while stopping is ignored so the host is always put back.
    with stop_on_signals():
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
            if tmp and not os.environ.get("DUALPATH_KEEP_CLUSTER_DIR"):
                shutil.rmtree(tmp, ignore_errors=True)


def engines_wanted() -> bool:
    """Whether the engine image is built and imported into the nodes: on unless
    DUALPATH_E2E_ENGINES=0 (it costs minutes the first time and ~4 GB per node)."""
    return os.environ.get("DUALPATH_E2E_ENGINES", "1") != "0"


def build_images(engine: bool = False) -> dict[str, dict[str, str]]:
    """Run hack/image-build.sh (cached); returns {"dualpath": {ref, archive}, "pause": ...},
    and "engine" with `engine` (vLLM's CPU build + the connector: minutes the first time)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "image-build.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DUALPATH_IMAGE_ENGINE": "1" if engine else "0"},
    )
    images: dict[str, dict[str, str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return images


def main() -> int:
    imgs = build_images(engine=engines_wanted())

    def announce(c: LocalCluster) -> None:
        for name in ("dualpath", "engine"):
            if name in imgs:
                t0 = time.monotonic()
                c.load_image(Path(imgs[name]["archive"]))
                log(f"{name} image imported into both nodes in {time.monotonic() - t0:.1f}s")
        print(f"export KUBECONFIG={c.kubeconfig}", flush=True)
        for name in ("dualpath", "engine"):
            if name in imgs:
                print(f"# {name} image: {imgs[name]['ref']}", flush=True)

    return run_until_stopped(local_cluster(Path(imgs["pause"]["archive"])), announce)


if __name__ == "__main__":
    sys.exit(main())
