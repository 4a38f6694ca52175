"""A real Kubernetes control plane on this machine for integration tests.

etcd + kube-apiserver + kube-controller-manager (binaries built by hack/k8s-binaries.sh),
on free loopback ports, state in a temp dir, every process stopped by its pid. Recipe and
pitfalls: ../shared/notes/local-cluster.md.

Run by hand: `python -m tests.support.localkube` starts one and prints the kubeconfig
path; Ctrl-C (SIGINT) or SIGTERM stops it and every child, also when it was started in the
background (where the shell starts it with SIGINT ignored). Each child also gets SIGTERM
from the kernel if this process dies without cleaning up (SIGKILL): PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.interrupts import run_until_stopped, stop_on_signals
from tests.support.wait import free_port

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies. The
    children run in their own session (a Ctrl-C on the terminal reaches only us, and we
    stop them in order), so without this a SIGKILLed parent would leave them running."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def k8s_bin_dir() -> Path:
    """Build (or find cached) server binaries; the script prints the dir on its last line."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "k8s-binaries.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class LocalControlPlane:
    workdir: Path
    bin_dir: Path
    api_port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    with_controller_manager: bool = True

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (owned by the process)
        try:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()  # the child holds its own copy

    def start(self, timeout: float = 90.0) -> LocalControlPlane:
        wd = self.workdir
        (wd / "certs").mkdir(parents=True, exist_ok=True)
        sa_key = wd / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(wd / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (wd / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        etcd_port, peer_port = free_port(), free_port()
        self.api_port = self.api_port or free_port()
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        self._spawn(
            "etcd",
            [
                etcd,
                "--name=dp",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=dp=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # test data: durability is not what we test here
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--insecure-port=0",
                f"--cert-dir={wd / 'certs'}",
                f"--token-auth-file={wd / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={wd / 'sa.pub'}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait_ready(timeout)
        # The API server writes its self-signed serving cert at start; trust exactly it.
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {self.server}
    certificate-authority: {self.workdir / "certs" / "apiserver.crt"}
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: local
  context: {{cluster: local, user: admin}}
current-context: local
"""
        )
        if self.with_controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    str(self.bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--port=0",
                    f"--service-account-private-key-file={sa_key}",
                    f"--root-ca-file={wd / 'certs' / 'apiserver.crt'}",
                    "--use-service-account-credentials=false",
                    "--concurrent-gc-syncs=5",
                ],
            )
        return self

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.log_tail(name)}")
            req = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(f"kube-apiserver not ready in {timeout}s ({last})")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self) -> None:
        # Reverse start order: controllers first, etcd last.
        for _name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(list(self.procs.items())):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


@contextlib.contextmanager
def local_control_plane(workdir: Path | None = None) -> Iterator[LocalControlPlane]:
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="dualpath-kube-")
        workdir = Path(tmp)
    cp = LocalControlPlane(workdir=workdir, bin_dir=k8s_bin_dir())
    # A signal during start (a child spawned, the API server not ready yet) also stops
    # what was started: the handlers are in place before the first spawn.
    with stop_on_signals():
        try:
            cp.start()
            yield cp
        finally:
            cp.stop()
            if tmp and not os.environ.get("DUALPATH_KEEP_KUBE_DIR"):
                shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    def announce(cp: LocalControlPlane) -> None:
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        # For scripts and tests: which processes and directory are ours to check.
        print("# " + json.dumps({"workdir": str(cp.workdir), "pids": cp.pids()}), flush=True)

    return run_until_stopped(local_control_plane(), announce)


if __name__ == "__main__":
    sys.exit(main())
