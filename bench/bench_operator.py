"""Operator benchmark: time from `create` of DualPathClusters to all their children present
and to their status written, for 1 and for 50 clusters.

Runs against a real API server: by default a local control plane (etcd + kube-apiserver +
kube-controller-manager, tests/support/localkube.py) started for the run, or any cluster
given with --kubeconfig. The operator runs as a real subprocess (`dualpath operator`).
Each round uses a fresh namespace; clusters are created back to back from one client, and
watches on the children and the clusters time-stamp what the operator did.

    python bench/bench_operator.py                          # rounds of 1 and 50 clusters
    python bench/bench_operator.py --counts 1,10 --json out.json

Latencies are per cluster, from its create call returning to the arrival (on watches) of
its last child / its first status covering the spec; "makespan" is from the first create
to the last cluster done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from dualpath_operator.process import OperatorProcess  # noqa: E402
from kubernetes import client, config  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from tests.support.metrics import sample_value  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

GROUP, VERSION, PLURAL = "dualpath.io", "v1alpha1", "dualpathclusters"
CRD_FILE = REPO / "manifests" / "crds" / "dualpath.io_dualpathclusters.yaml"
CHILDREN_PER_CLUSTER = 12  # 2 SA, Role, RoleBinding, 2 CM, 2 Svc, 2 DS, Deploy, PDB


@contextlib.contextmanager
def control_plane(kubeconfig: str | None) -> Iterator[Path]:
    if kubeconfig:
        yield Path(kubeconfig)
        return
    from tests.support.localkube import local_control_plane

    print("starting a local control plane (etcd, kube-apiserver, controller-manager)...")
    with local_control_plane() as cp:
        yield cp.kubeconfig


def install_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD_FILE.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for("the CRD established", established, 30)


class Operator(OperatorProcess):
    def __init__(
        self, kubeconfig: Path, namespace_glob: str, lease_ns: str, log: Path, workers: int
    ) -> None:
        super().__init__(
            kubeconfig=kubeconfig,
            namespaces=[namespace_glob],
            log_path=log,
            extra_args=["--lease-namespace", lease_ns, "--workers", str(workers)],
        )
        self.start()

    def reconcile_totals(self) -> tuple[float, float]:
        """(reconcile calls, seconds spent in them) so far; raises when not exported."""
        text = self.get("/metrics")[1]
        reconcile = {"handler": "reconcile"}
        return (
            sample_value(text, "dualpath_operator_handler_calls_total", reconcile),
            sample_value(text, "dualpath_operator_handler_duration_seconds_sum", reconcile),
        )

    def wait_leader(self, timeout: float = 60) -> None:
        def leading() -> bool:
            ready = self.readyz()
            return "leader" in ready and "standby" not in ready

        wait_for("the operator to lead", leading, timeout, self.check_alive)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}")


def cluster_body(name: str, tag: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DualPathCluster",
        "metadata": {"name": name},
        "spec": {
            "storage": {"model": {"preset": "deepseek-v3.2-660b"}},
            "nodes": {
                "prefill": {"nodeSelector": {"bench": f"{tag}-prefill"}},
                "decode": {"nodeSelector": {"bench": f"{tag}-decode"}},
            },
        },
    }


# What to watch, as (API path prefix, kind): the 12 children of a cluster come in 8 kinds.
CHILD_PATHS = (
    ("/api/v1", "configmaps"),
    ("/api/v1", "services"),
    ("/api/v1", "serviceaccounts"),
    ("/apis/apps/v1", "daemonsets"),
    ("/apis/apps/v1", "deployments"),
    ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    ("/apis/policy/v1beta1", "poddisruptionbudgets"),
)


class Observer:
    """Watches (one thread per resource) that time-stamp, on arrival, each child's first
    appearance and each cluster's first written status. Cheaper and more exact than
    polling lists, so the measurement does not compete with the operator for the API."""

    def __init__(self, kubeconfig: Path, ns: str) -> None:
        from dualpath_operator.kube import load_credentials

        self.creds = load_credentials(str(kubeconfig))
        self.ns = ns
        self.children: dict[str, set[str]] = {}
        self.children_done: dict[str, float] = {}
        self.status_done: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._watch, args=(f"{prefix}/namespaces/{ns}/{plural}", True), daemon=True
            )
            for prefix, plural in CHILD_PATHS
        ]
        self._threads.append(
            threading.Thread(
                target=self._watch,
                args=(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", False),
                daemon=True,
            )
        )

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, path: str, child: bool) -> None:
        import httpx

        try:
            self._stream(path, child)
        except (httpx.HTTPError, OSError) as exc:
            if not self._stop.is_set():
                print(f"  watch {path} failed: {exc}", file=sys.stderr)

    def _stream(self, path: str, child: bool) -> None:
        import httpx

        params = {"watch": "1", "timeoutSeconds": "600"}
        if child:
            params["labelSelector"] = "app.kubernetes.io/managed-by=dualpath-operator"
        headers = {"Authorization": self.creds.authorization() or ""}
        with (
            httpx.Client(
                base_url=self.creds.host, verify=self.creds.ssl_context, timeout=None
            ) as http,
            http.stream("GET", path, params=params, headers=headers) as resp,
        ):
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if not line:
                    continue
                now = time.monotonic()
                obj = json.loads(line).get("object", {})
                if child:
                    self._saw_child(obj, now)
                else:
                    self._saw_cluster(obj, now)

    def _saw_child(self, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata", {})
        cluster = (meta.get("labels") or {}).get("dualpath.io/cluster", "")
        with self._lock:
            seen = self.children.setdefault(cluster, set())
            seen.add(f"{obj.get('kind')}/{meta.get('name')}")
            if len(seen) >= CHILDREN_PER_CLUSTER:
                self.children_done.setdefault(cluster, now)

    def _saw_cluster(self, obj: dict[str, Any], now: float) -> None:
        status = obj.get("status") or {}
        meta = obj.get("metadata", {})
        if status.get("observedGeneration") == meta.get("generation") and status.get("conditions"):
            with self._lock:
                self.status_done.setdefault(meta.get("name", ""), now)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(latencies: dict[str, float]) -> dict[str, float]:
    values = list(latencies.values())
    return {
        "p50_s": round(statistics.median(values), 3),
        "p95_s": round(percentile(values, 0.95), 3),
        "max_s": round(max(values), 3),
    }


def run_round(
    api: client.ApiClient, op: Operator, kubeconfig: Path, ns: str, count: int, timeout: float
) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    co = client.CustomObjectsApi(api)
    observer = Observer(kubeconfig, ns)
    observer.start()
    # Let the watches open and the operator's namespace watches pick up the new namespace.
    time.sleep(1.5)
    calls_before, seconds_before = op.reconcile_totals()
    created: dict[str, float] = {}
    names = [f"c{i:03d}" for i in range(count)]
    start = time.monotonic()
    for name in names:
        co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, cluster_body(name, ns))
        created[name] = time.monotonic()
    create_s = time.monotonic() - start
    print(f"  created {count} DualPathClusters in {create_s:.2f}s")
    deadline = start + timeout
    last_report = 0.0
    while len(observer.children_done) < count or len(observer.status_done) < count:
        now = time.monotonic()
        if now > deadline:
            observer.stop()
            raise TimeoutError(
                f"{count} clusters: children {len(observer.children_done)}/{count}, "
                f"status {len(observer.status_done)}/{count} after {timeout}s"
            )
        if now - last_report > 1.0:
            print(
                f"  ... children complete {len(observer.children_done)}/{count}, "
                f"status written {len(observer.status_done)}/{count}"
            )
            last_report = now
        time.sleep(0.05)
    observer.stop()
    time.sleep(0.5)  # let the last reconciles finish (their durations are recorded at the end)
    calls_after, seconds_after = op.reconcile_totals()
    reconciles = calls_after - calls_before
    rec_sum = seconds_after - seconds_before
    children_at, status_at = observer.children_done, observer.status_done
    result = {
        "clusters": count,
        "children_per_cluster": CHILDREN_PER_CLUSTER,
        "create_calls_s": round(create_s, 3),
        "children_present": summarize({n: children_at[n] - created[n] for n in names}),
        "status_written": summarize({n: status_at[n] - created[n] for n in names}),
        "makespan_children_s": round(max(children_at[n] for n in names) - start, 3),
        "makespan_status_s": round(max(status_at[n] for n in names) - start, 3),
        "reconciles": int(reconciles),
        "mean_reconcile_s": round(rec_sum / reconciles, 4) if reconciles else None,
    }
    result["clusters_per_s"] = round(count / result["makespan_status_s"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,50", help="cluster counts, one round each")
    parser.add_argument("--kubeconfig", help="use this cluster instead of a local control plane")
    parser.add_argument("--workers", type=int, default=4, help="operator's concurrent reconciles")
    parser.add_argument("--timeout", type=float, default=180.0, help="per round")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    run_id = uuid.uuid4().hex[:6]
    results: dict[str, Any] = {
        "bench": "operator",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "operator_workers": args.workers,
        "rounds": [],
    }
    with control_plane(args.kubeconfig) as kubeconfig:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        install_crd(api)
        lease_ns = f"bench-{run_id}-lease"
        core = client.CoreV1Api(api)
        core.create_namespace(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lease_ns}}
        )
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-operator-{run_id}.log"
        op = Operator(kubeconfig, f"bench-{run_id}-*", lease_ns, log, args.workers)
        namespaces = [lease_ns]
        try:
            op.wait_leader()
            print(f"operator ready (log: {log})")
            for count in counts:
                ns = f"bench-{run_id}-n{count}"
                namespaces.append(ns)
                print(f"round: {count} DualPathCluster(s) in {ns}")
                row = run_round(api, op, kubeconfig, ns, count, args.timeout)
                results["rounds"].append(row)
                print(
                    f"  children present: p50 {row['children_present']['p50_s']}s "
                    f"max {row['children_present']['max_s']}s; status written: p50 "
                    f"{row['status_written']['p50_s']}s max {row['status_written']['max_s']}s; "
                    f"{row['reconciles']} reconciles, {row['clusters_per_s']} clusters/s"
                )
        finally:
            op.stop()
            if args.kubeconfig:
                for ns in namespaces:
                    with contextlib.suppress(ApiException):
                        core.delete_namespace(ns)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
