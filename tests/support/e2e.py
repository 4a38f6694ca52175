"""Cluster providers and Kubernetes helpers of the e2e suite (tests/e2e).

The suite is cluster-agnostic: it needs a kubeconfig, an image the nodes can run, and two
schedulable nodes labelled dualpath.io/role=prefill and =decode. A provider supplies them:

- `local` (default; what CI runs): a real two-node cluster on this machine, built from
  Debian packages by tests/support/localcluster.py; the image comes from
  hack/image-build.sh and is imported into each node's containerd. Needs root.
- `kind`: a kind cluster from tests/e2e/kind-config.yaml (created when missing); the image
  is built with `docker build` (Dockerfile) and loaded with `kind load docker-image`.
- `existing`: any cluster: DUALPATH_E2E_KUBECONFIG (or KUBECONFIG) and DUALPATH_E2E_IMAGE,
  an image its nodes can pull; optional DUALPATH_E2E_IMAGE_LOADER, a shell command run with
  {archive} and {ref} replaced after hack/image-build.sh, when you must load images by hand.

Pick one with DUALPATH_E2E_PROVIDER=local|kind|existing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO / "tests" / "e2e" / "kind-config.yaml"
ROLE_LABEL = "dualpath.io/role"


class ProviderUnavailable(Exception):
    """This machine cannot run the chosen provider; the message says why (the suite skips)."""


@dataclass
class E2EEnv:
    provider: str
    kubeconfig: Path
    # The DualPath image every pod of the suite runs (operator, agents, controller, drivers).
    image: str
    # A directory on every node for the agents' block stores (hostPath); the suite uses
    # a fresh subdirectory per test.
    node_scratch: str
    # The engine image (vLLM's CPU build + the DualPath connector, Dockerfile.engine) every
    # node can run, or None when this provider has none (the engine steps then skip).
    engine_image: str | None = None

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def provider_name() -> str:
    return os.environ.get("DUALPATH_E2E_PROVIDER", "local")


@contextlib.contextmanager
def e2e_environment() -> Iterator[E2EEnv]:
    name = provider_name()
    providers: dict[str, Callable[[], contextlib.AbstractContextManager[E2EEnv]]] = {
        "local": local_provider,
        "kind": kind_provider,
        "existing": existing_provider,
    }
    if name not in providers:
        raise ProviderUnavailable(
            f"DUALPATH_E2E_PROVIDER={name!r}: choose one of {', '.join(providers)}"
        )
    with providers[name]() as env:
        yield env


# --- providers ---------------------------------------------------------------------------


def _run_script(script: str, env: dict[str, str] | None = None) -> str:
    """Run a hack/ script, progress on stderr (visible with -s), result on stdout."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / script)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def local_provider() -> Iterator[E2EEnv]:
    if os.geteuid() != 0:
        raise ProviderUnavailable(
            "the local provider needs root (bridges, iptables, containerd, kubelet); "
            "run as root or choose DUALPATH_E2E_PROVIDER=kind|existing"
        )
    from tests.support import cluster_host, localcluster

    t0 = time.monotonic()
    _run_script("e2e-deps.sh")  # Debian packages + the five Kubernetes binaries (cached)
    t_deps = time.monotonic()
    engines = localcluster.engines_wanted()
    images = localcluster.build_images(engine=engines)
    t_img = time.monotonic()
    problems = cluster_host.missing_prerequisites()
    if problems:
        raise ProviderUnavailable("; ".join(problems))
    with localcluster.local_cluster(Path(images["pause"]["archive"])) as cluster:
        t_up = time.monotonic()
        cluster.load_image(Path(images["dualpath"]["archive"]))
        t_load = time.monotonic()
        engine_image = None
        if engines:
            # ~1.3 GB archive, ~4 GB unpacked: seconds when the node cache already holds it.
            cluster.load_image(Path(images["engine"]["archive"]))
            engine_image = images["engine"]["ref"]
        t_engine = time.monotonic()
        cluster_host.log(
            f"setup: deps {t_deps - t0:.1f}s, images {t_img - t_deps:.1f}s, "
            f"cluster {t_up - t_img:.1f}s, image import {t_load - t_up:.1f}s, "
            f"engine image import {t_engine - t_load:.1f}s"
        )
        yield E2EEnv(
            provider="local",
            kubeconfig=cluster.kubeconfig,
            image=images["dualpath"]["ref"],
            node_scratch=str(cluster.workdir / "node-scratch"),
            engine_image=engine_image,
        )


def package_dirs() -> list[str]:
    """The folders holding the import packages (pyproject.toml's packages.find.where)."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["where"])


def _source_digest() -> str:
    h = hashlib.sha256()
    for top in ["pyproject.toml", "Dockerfile", "hack/image", *package_dirs()]:
        path = REPO / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def kind_provider() -> Iterator[E2EEnv]:
    for tool in ("kind", "docker"):
        if shutil.which(tool) is None:
            raise ProviderUnavailable(f"the kind provider needs `{tool}` on PATH")
    import yaml

    name = yaml.safe_load(KIND_CONFIG.read_text())["name"]
    existing = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout
    if name not in existing.split():
        subprocess.run(["kind", "create", "cluster", "--config", str(KIND_CONFIG)], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="dualpath-kind-"))
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        subprocess.run(
            ["kind", "get", "kubeconfig", "--name", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    from tests.support.localcluster import engines_wanted

    ref = f"docker.io/dualpath/dualpath:e2e-{_source_digest()}"
    subprocess.run(["docker", "build", "-t", ref, str(REPO)], check=True)
    subprocess.run(["kind", "load", "docker-image", ref, "--name", name], check=True)
    engine_ref = None
    if engines_wanted():  # the engine image's CPU target: vLLM's CPU build + the connector
        engine_ref = f"docker.io/dualpath/engine:e2e-{_source_digest()}"
        build = ["docker", "build", "-f", str(REPO / "Dockerfile.engine"), "--target", "cpu"]
        subprocess.run([*build, "-t", engine_ref, str(REPO)], check=True)
        subprocess.run(["kind", "load", "docker-image", engine_ref, "--name", name], check=True)
    try:
        yield E2EEnv(
            provider="kind",
            kubeconfig=kubeconfig,
            image=ref,
            node_scratch="/var/tmp/dualpath-e2e",
            engine_image=engine_ref,
        )
    finally:
        if os.environ.get("DUALPATH_E2E_KIND_DELETE") == "1":
            subprocess.run(["kind", "delete", "cluster", "--name", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def existing_provider() -> Iterator[E2EEnv]:
    kubeconfig = os.environ.get("DUALPATH_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG")
    image = os.environ.get("DUALPATH_E2E_IMAGE")
    if not kubeconfig or not image:
        raise ProviderUnavailable(
            "the existing provider needs DUALPATH_E2E_KUBECONFIG (or KUBECONFIG) and "
            "DUALPATH_E2E_IMAGE (an image the nodes can pull)"
        )
    loader = os.environ.get("DUALPATH_E2E_IMAGE_LOADER")
    if loader:
        images = json.loads(_run_script("image-build.sh"))
        cmd = loader.format(
            archive=shlex.quote(images["dualpath"]["archive"]), ref=shlex.quote(image)
        )
        subprocess.run(cmd, shell=True, check=True)
    yield E2EEnv(
        provider="existing",
        kubeconfig=Path(kubeconfig),
        image=image,
        node_scratch=os.environ.get("DUALPATH_E2E_NODE_SCRATCH", "/var/tmp/dualpath-e2e"),
        # The engine steps need an engine image the nodes can pull (Dockerfile.engine).
        engine_image=os.environ.get("DUALPATH_E2E_ENGINE_IMAGE") or None,
    )


# --- reporting ---------------------------------------------------------------------------------


def describe_namespace(api_client: Any, namespace: str, log_lines: int = 15) -> str:
    """Pods (phase, node, container states), recent events and log tails: what a person
    would look at first when an e2e step times out."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    lines = [f"--- namespace {namespace}"]
    try:
        for pod in core.list_namespaced_pod(namespace).items:
            states = []
            for cs in pod.status.container_statuses or []:
                st = cs.state
                if st.waiting:
                    states.append(
                        f"{cs.name}: waiting {st.waiting.reason} {st.waiting.message or ''}"
                    )
                elif st.terminated:
                    states.append(
                        f"{cs.name}: terminated {st.terminated.reason} rc={st.terminated.exit_code}"
                    )
                else:
                    states.append(
                        f"{cs.name}: running ready={cs.ready} restarts={cs.restart_count}"
                    )
            lines.append(
                f"pod {pod.metadata.name} {pod.status.phase} on {pod.spec.node_name}: {'; '.join(states)}"
            )
            for cs in pod.status.container_statuses or []:
                with contextlib.suppress(Exception):
                    logs = core.read_namespaced_pod_log(
                        pod.metadata.name, namespace, container=cs.name, tail_lines=log_lines
                    )
                    lines.extend(f"    | {line}" for line in logs.splitlines())
        events = core.list_namespaced_event(namespace).items
        events.sort(key=lambda e: str(e.last_timestamp or e.event_time or ""))
        for ev in events[-20:]:
            lines.append(
                f"event {ev.type} {ev.reason} {ev.involved_object.kind}/{ev.involved_object.name}: {ev.message}"
            )
    except Exception as exc:
        lines.append(f"(could not describe: {exc})")
    return "\n".join(lines)
