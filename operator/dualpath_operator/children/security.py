"""Pod and container security contexts, and the scratch volume a read-only root
filesystem needs, for every workload the operator builds.

The traffic controller meets the Pod Security Standard "restricted". The agents drop every
capability and add only IPC_LOCK, and only when they run as root: Kubernetes sets no
ambient capabilities, so a capability added to a non-root container never reaches its
process (it would cost the namespace's Pod Security level and buy nothing). They run as
root for the hostPath backend (the kubelet creates that directory root-owned and fsGroup
does not apply to hostPath volumes), as the image's non-root user otherwise.
"""

from __future__ import annotations

from dualpath_operator.api import DualPathClusterSpec
from dualpath_operator.constants import APP_UID
from dualpath_operator.kube import Obj

RUNTIME_DEFAULT_SECCOMP: Obj = {"type": "RuntimeDefault"}
# Pins the agent's host buffer and lets RDMA register it past RLIMIT_MEMLOCK.
AGENT_CAPABILITIES = ("IPC_LOCK",)
SCRATCH_DIR = "/tmp"
SCRATCH_VOLUME = "tmp"


def non_root_pod_security_context() -> Obj:
    # fsGroup: mounted Secrets/ConfigMaps and a PVC become group-readable/writable for
    # the image's user, whatever mode or owner they came with. OnRootMismatch: a large
    # KV store volume is not chowned file by file on every pod start.
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "fsGroup": APP_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
    }


def restricted_container_security_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def scratch_volume(size_limit: str) -> tuple[Obj, Obj]:
    """A writable /tmp: the root filesystem is read-only (Python's tempfile, UCX/NIXL)."""
    volume = {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size_limit}}
    mount = {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR}
    return volume, mount


# --- the traffic controller ------------------------------------------------------------


def controller_pod_security_context() -> Obj:
    return non_root_pod_security_context()


def controller_container_security_context() -> Obj:
    return restricted_container_security_context()


# --- the agents ---------------------------------------------------------------------------


def agent_runs_as_root(spec: DualPathClusterSpec) -> bool:
    agent = spec.agent
    if agent.privileged:
        return True
    if agent.run_as_non_root is not None:
        return not agent.run_as_non_root
    return spec.storage.backend == "hostPath"


def agent_pod_security_context(spec: DualPathClusterSpec) -> Obj:
    if agent_runs_as_root(spec):
        return {"seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP)}
    return non_root_pod_security_context()


def agent_container_security_context(spec: DualPathClusterSpec) -> Obj:
    if spec.agent.privileged:
        # Everything, as asked (a privileged container ignores seccomp and capabilities;
        # Kubernetes rejects allowPrivilegeEscalation: false beside privileged: true).
        return {
            "privileged": True,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "readOnlyRootFilesystem": True,
        }
    out = restricted_container_security_context()
    if agent_runs_as_root(spec):
        out["runAsUser"] = 0
        out["runAsGroup"] = 0
        out["runAsNonRoot"] = False
        out["capabilities"] = {"add": list(AGENT_CAPABILITIES), "drop": ["ALL"]}
    return out


# --- the engines ----------------------------------------------------------------------------


def engine_pod_security_context() -> Obj:
    """No user forced: the CPU engine image runs as its non-root user (65532), vLLM's CUDA
    image as root. fsGroup makes the mounted identity (mode 0440) readable either way."""
    return {
        "fsGroup": APP_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
    }


def engine_container_security_context() -> Obj:
    # vLLM needs no capability; what it writes goes to /tmp (HOME, torch's compile caches)
    # and /dev/shm, both emptyDirs.
    return restricted_container_security_context()
