"""The cluster under the e2e suite works: two role-labelled nodes run the DualPath image,
and pods reach each other across nodes through a Service name (cluster DNS + kube-proxy)
and the API server through the in-cluster `kubernetes` Service with their token."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.support.e2e import ROLE_LABEL, E2EEnv, describe_namespace
from tests.support.wait import wait_for

CLIENT_SCRIPT = r"""
import json, socket, ssl, sys, time, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"

def retry(what, *args):
    # A new Service reaches cluster DNS and kube-proxy within seconds; retry until then.
    for attempt in range(30):
        try:
            return what(*args)
        except OSError:
            if attempt == 29:
                raise
            time.sleep(1)


def fetch(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


out = {"resolved": retry(socket.gethostbyname, "web")}
out["short"] = retry(fetch, "http://web/token.txt")
out["fqdn"] = retry(fetch, "http://web.%s.svc.cluster.local/token.txt" % open(sa + "/namespace").read())
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request("https://kubernetes.default.svc/version",
                             headers={"Authorization": "Bearer " + open(sa + "/token").read()})
out["api"] = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"]
print("RESULT " + json.dumps(out), flush=True)
"""


def node_for(core: Any, role: str) -> str:
    nodes = core.list_node(label_selector=f"{ROLE_LABEL}={role}").items
    assert nodes, f"no node labelled {ROLE_LABEL}={role}"
    return str(nodes[0].metadata.name)


def pod(
    name: str, image: str, node: str, command: list[str], labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                }
            ],
        },
    }


def test_nodes_ready_with_roles(e2e: E2EEnv) -> None:
    from kubernetes import client

    core = client.CoreV1Api(e2e.api_client())
    roles = {}
    for node in core.list_node().items:
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        role = (node.metadata.labels or {}).get(ROLE_LABEL)
        if role and ready:
            roles.setdefault(role, []).append(node.metadata.name)
    assert roles.get("prefill") and roles.get("decode"), f"Ready nodes by role: {roles}"
    assert set(roles["prefill"]).isdisjoint(roles["decode"])


def test_pods_reach_service_dns_and_api_across_nodes(e2e: E2EEnv, e2e_namespace: str) -> None:
    from kubernetes import client

    api = e2e.api_client()
    core = client.CoreV1Api(api)
    ns = e2e_namespace
    token = secrets.token_hex(8)
    prefill, decode = node_for(core, "prefill"), node_for(core, "decode")
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: core.read_namespaced_service_account("default", ns),
        30,
    )
    serve = f"mkdir -p /tmp/www && echo -n {token} >/tmp/www/token.txt && exec python3 -m http.server 8080 -d /tmp/www"
    core.create_namespaced_pod(
        ns, pod("web", e2e.image, decode, ["sh", "-c", serve], {"app": "web"})
    )
    core.create_namespaced_service(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    core.create_namespaced_pod(
        ns, pod("client", e2e.image, prefill, ["python3", "-c", CLIENT_SCRIPT], {})
    )

    def finished() -> str | None:
        phase = core.read_namespaced_pod("client", ns).status.phase
        assert phase != "Failed", core.read_namespaced_pod_log("client", ns)
        return phase if phase == "Succeeded" else None

    wait_for("the client pod to finish", finished, 120, explain=lambda: describe_namespace(api, ns))
    logs = core.read_namespaced_pod_log("client", ns)
    result = json.loads(logs.split("RESULT ", 1)[1])
    svc_ip = core.read_namespaced_service("web", ns).spec.cluster_ip
    assert result["resolved"] == svc_ip
    assert result["short"] == token and result["fqdn"] == token
    assert result["api"].startswith("v1.")
    web = core.read_namespaced_pod("web", ns)
    client_pod = core.read_namespaced_pod("client", ns)
    assert web.spec.node_name != client_pod.spec.node_name
