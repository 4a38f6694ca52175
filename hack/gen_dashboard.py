"""Generate the DualPath Grafana dashboard (charts/dualpath/files/dashboard.json).

Run `python hack/gen_dashboard.py` after changing the panels; a unit test fails when the
committed JSON differs from this script's output, and another checks that every metric the
panels query is defined by the components' metrics modules.

Rows: the scheduler (is traffic spread over both read paths?), the agents (bytes per path,
storage read queues, transfer latency, integrity) and the operator (reconciles, errors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "charts" / "dualpath" / "files" / "dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query is narrowed to the chosen namespace(s).
NS = 'namespace=~"$namespace"'

Panel = dict[str, Any]


def target(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": "A"}


def timeseries(title: str, unit: str, targets: list[tuple[str, str]], desc: str) -> Panel:
    refs = "ABCDEFGH"
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [dict(target(e, leg), refId=refs[i]) for i, (e, leg) in enumerate(targets)],
    }


def stat(title: str, unit: str, expr: str, desc: str) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [target(expr, "")],
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def p99(metric: str, by: str) -> str:
    return f"histogram_quantile(0.99, sum by (le, {by}) (rate({metric}_bucket{{{NS}}}[$__rate_interval])))"


def scheduler_panels() -> list[Panel]:
    return [
        row("Traffic controller"),
        timeseries(
            "Decisions by read path",
            "reqps",
            [
                (
                    f"sum by (path) (rate(dualpath_controller_decisions_total{{{NS}}}[$__rate_interval]))",
                    "{{path}}",
                )
            ],
            "Requests scheduled per second on the prefill-side (pe_read), decode-side (de_read) "
            "or split read path. DualPath pays off when both paths carry traffic.",
        ),
        timeseries(
            "Decode-side read fraction (p50 / p90)",
            "percentunit",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate(dualpath_controller_de_read_fraction_bucket{{{NS}}}[$__rate_interval])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.9)
            ],
            "Share of each request's cached KV bytes read through the decode node.",
        ),
        timeseries(
            "Decision latency p99",
            "s",
            [(p99("dualpath_controller_decision_latency_seconds", "policy"), "{{policy}}")],
            "Time for the policy core to choose engines and a read path for one request.",
        ),
        timeseries(
            "Unfinished tokens per engine",
            "short",
            [
                (
                    f"sum by (role, engine) (dualpath_controller_engine_unfinished_tokens{{{NS}}})",
                    "{{role}} {{engine}}",
                )
            ],
            "tok_e of the paper's scheduler: work booked on each engine.",
        ),
        stat(
            "Drained engines",
            "short",
            f"sum(dualpath_controller_engine_drained{{{NS}}})",
            "Engines that stopped reporting and get no new work.",
        ),
        timeseries(
            "Controller gRPC errors",
            "reqps",
            [
                (
                    f"sum by (method, code) (rate(dualpath_controller_rpc_errors_total{{{NS}}}[$__rate_interval]))",
                    "{{method}} {{code}}",
                )
            ],
            "Calls answered with an error status (bad input, unknown engines, ...).",
        ),
    ]


def agent_panels() -> list[Panel]:
    return [
        row("KV agents"),
        timeseries(
            "KV bytes moved by path",
            "Bps",
            [
                (
                    f"sum by (path, direction) (rate(dualpath_agent_bytes_total{{{NS}}}[$__rate_interval]))",
                    "{{path}} {{direction}}",
                )
            ],
            "Bytes per second through the agents, by read path and direction.",
        ),
        timeseries(
            "Storage read queue per agent",
            "bytes",
            [
                (
                    f"sum by (pod) (dualpath_agent_read_queue_bytes{{{NS}}})",
                    "{{pod}}",
                )
            ],
            "Bytes waiting for each node's storage NIC (one agent per node): the signal the scheduler balances.",
        ),
        timeseries(
            "Storage NIC bytes in flight",
            "bytes",
            [(f"sum by (pod) (dualpath_agent_snic_inflight_bytes{{{NS}}})", "{{pod}}")],
            "Bytes being read from storage right now, per agent pod.",
        ),
        timeseries(
            "Load latency p99 by path",
            "s",
            [(p99("dualpath_agent_load_seconds", "path"), "{{path}}")],
            "Time for a prefill node to get a request's KV cache, by read path.",
        ),
        timeseries(
            "Time to first layer p99",
            "s",
            [(p99("dualpath_agent_first_layer_seconds", "path"), "{{path}}")],
            "Layer-wise streaming: time until layer 0 is usable.",
        ),
        stat(
            "Checksum failures",
            "short",
            f"sum(increase(dualpath_agent_checksum_failures_total{{{NS}}}[$__range]))",
            "KV data that failed verification (never served); should stay 0.",
        ),
        stat(
            "Agents on a fallback transport",
            "short",
            f"sum(dualpath_agent_fallback_active{{{NS}}})",
            "Agents not using NIXL (RDMA/UCX) for KV transfers.",
        ),
    ]


def operator_panels() -> list[Panel]:
    return [
        row("Operator"),
        timeseries(
            "Reconciles by result",
            "ops",
            [
                (
                    f"sum by (result) (rate(dualpath_operator_reconcile_total{{{NS}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            "DualPathCluster reconciles per second (applied, invalid, gone, error).",
        ),
        timeseries(
            "Reconcile duration p99",
            "s",
            [(p99("dualpath_operator_handler_duration_seconds", "handler"), "{{handler}}")],
            "Wall time of the operator's handlers.",
        ),
        stat(
            "DualPathClusters",
            "short",
            f"max(dualpath_operator_clusters{{{NS}}})",
            "DualPathClusters the leading operator replica knows.",
        ),
        stat(
            "Leader replicas",
            "short",
            f"sum(dualpath_operator_leader{{{NS}}})",
            "Operator replicas holding the Lease: exactly 1 when healthy.",
        ),
    ]


def layout(panels: list[Panel]) -> list[Panel]:
    """Grid positions, filled left to right in lines: rows span the width; time series
    take half a line, stats a quarter. A line is as tall as its tallest panel."""
    y = x = line_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        p = dict(p, id=i)
        if p["type"] == "row":
            y, x, line_h = y + line_h, 0, 0
            p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
        else:
            w, h = (6, 4) if p["type"] == "stat" else (12, 8)
            if x + w > 24:
                y, x, line_h = y + line_h, 0, 0
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x += w
            line_h = max(line_h, h)
        out.append(p)
    return out


def dashboard() -> dict[str, Any]:
    variable = {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    namespace = {
        "type": "query",
        "name": "namespace",
        "label": "Namespace",
        "datasource": DATASOURCE,
        "query": {"query": "label_values(dualpath_agent_bytes_total, namespace)", "refId": "ns"},
        "definition": "label_values(dualpath_agent_bytes_total, namespace)",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "refresh": 2,
        "hide": 0,
    }
    return {
        "title": "DualPath",
        "uid": "dualpath-overview",
        "description": "DualPath: read-path balance, KV agents and operator health.",
        "tags": ["dualpath", "llm", "kv-cache"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [variable, namespace]},
        "annotations": {"list": []},
        "panels": layout(scheduler_panels() + agent_panels() + operator_panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD.write_text(render())
    print(f"wrote {DASHBOARD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
