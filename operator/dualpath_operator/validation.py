"""Rules the CRD schema cannot express (the v1.20 floor has no CEL).

The API server enforces types, enums and bounds; these checks cover relations between
fields. A spec that fails them is accepted by the API server but reported Degraded with
reason InvalidSpec, every problem naming its field, and the operator leaves the children
as they were. All functions are pure.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dualpath_operator.api import (
    AttachmentSpec,
    DualPathClusterSpec,
    NodePool,
    QosClass,
    ResourceRequirements,
)
from dualpath_operator.quantity import parse_quantity

# Environment the operator derives from the spec; extraEnv must not shadow it silently.
MANAGED_ENV_PREFIXES = ("UCX_", "NCCL_", "DUALPATH_")
_PERCENT = re.compile(r"^[0-9]{1,3}%$")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _loc_to_field(loc: Iterable[Any]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_spec(raw: dict[str, Any]) -> tuple[DualPathClusterSpec | None, list[Problem]]:
    """Parse a CR's spec; schema-level problems (normally caught by the API server, but
    possible for objects stored before a CRD change) come back as Problems."""
    try:
        spec = DualPathClusterSpec.model_validate(raw)
    except ValidationError as exc:
        return None, [Problem(_loc_to_field(e["loc"]), e["msg"]) for e in exc.errors()]
    return spec, semantic_problems(spec)


# Child names append suffixes like "-prefill-agent" and Services need DNS-1035 labels
# (<= 63 characters, starting with a letter); 40 leaves room for every suffix.
MAX_NAME_LENGTH = 40
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def name_problems(name: str) -> list[Problem]:
    if len(name) > MAX_NAME_LENGTH:
        return [Problem("metadata.name", f"at most {MAX_NAME_LENGTH} characters, got {len(name)}")]
    if not _NAME.match(name):
        return [
            Problem(
                "metadata.name",
                "must start with a letter and contain only a-z, 0-9 and '-' "
                "(child Service names are derived from it)",
            )
        ]
    return []


def semantic_problems(spec: DualPathClusterSpec) -> list[Problem]:
    problems: list[Problem] = []
    problems += _model_problems(spec)
    problems += _storage_problems(spec)
    problems += _qos_problems(spec.network.qos)
    problems += _attachment_problems(spec.network.attachments)
    problems += _node_problems(spec)
    problems += _workload_problems(spec)
    problems += _pod_security_problems(spec)
    problems += _network_policy_problems(spec)
    problems += _engines_problems(spec)
    return problems


def effective_traffic_class(qos: QosClass) -> int:
    """The IB/RoCE traffic class byte: DSCP in the upper six bits unless given."""
    return qos.traffic_class if qos.traffic_class is not None else qos.dscp << 2


def _model_problems(spec: DualPathClusterSpec) -> list[Problem]:
    model = spec.storage.model
    field = "spec.storage.model"
    explicit = (model.layers, model.bytes_per_token_layer)
    if model.preset is not None and any(v is not None for v in explicit):
        return [Problem(field, "give either preset or layers+bytesPerTokenLayer, not both")]
    if model.preset is None and None in explicit:
        return [Problem(field, "give a preset, or both layers and bytesPerTokenLayer")]
    return []


def _storage_problems(spec: DualPathClusterSpec) -> list[Problem]:
    storage = spec.storage
    problems = []
    if storage.backend == "pvc" and storage.pvc is None:
        problems.append(Problem("spec.storage.pvc", "required when backend is pvc"))
    if storage.backend != "pvc" and storage.pvc is not None:
        problems.append(
            Problem("spec.storage.pvc", f"only used with backend pvc, not {storage.backend}")
        )
    if parse_quantity(storage.capacity) <= 0:
        problems.append(Problem("spec.storage.capacity", "must be positive"))
    return problems


def _duplicates(values: Iterable[Any]) -> list[Any]:
    return [v for v, n in Counter(values).items() if n > 1]


def _qos_problems(classes: list[QosClass]) -> list[Problem]:
    field = "spec.network.qos"
    problems = []
    for dup in _duplicates(c.name for c in classes):
        problems.append(Problem(field, f"two classes are named {dup!r}"))
    for i, c in enumerate(classes):
        if c.traffic_class is not None and c.traffic_class >> 2 != c.dscp:
            problems.append(
                Problem(
                    f"{field}[{i}].trafficClass",
                    f"{c.traffic_class} carries DSCP {c.traffic_class >> 2}, but dscp is {c.dscp}",
                )
            )
    seen_dscp: dict[int, int] = {}
    seen_tc: dict[int, int] = {}
    for i, c in enumerate(classes):
        if c.dscp in seen_dscp:
            problems.append(
                Problem(
                    f"{field}[{i}].dscp",
                    f"DSCP {c.dscp} is already used by {field}[{seen_dscp[c.dscp]}]; "
                    "classes must not share a DSCP",
                )
            )
        seen_dscp.setdefault(c.dscp, i)
        tc = effective_traffic_class(c)
        if tc in seen_tc and c.traffic_class is not None:
            problems.append(
                Problem(
                    f"{field}[{i}].trafficClass",
                    f"traffic class {tc} is already used by {field}[{seen_tc[tc]}]",
                )
            )
        seen_tc.setdefault(tc, i)
    purposes = Counter(c.purpose for c in classes)
    if purposes["kvCache"] != 1:
        problems.append(
            Problem(
                field, f"needs exactly one class with purpose kvCache, has {purposes['kvCache']}"
            )
        )
    if purposes["collectives"] > 1:
        problems.append(Problem(field, "at most one class may have purpose collectives"))
    total = sum(c.bandwidth_percent for c in classes)
    if total > 100:
        problems.append(Problem(field, f"bandwidthPercent adds up to {total}, more than 100"))
    kv = next((i for i, c in enumerate(classes) if c.purpose == "kvCache"), None)
    coll = next((i for i, c in enumerate(classes) if c.purpose == "collectives"), None)
    if kv is not None and coll is not None:
        for attr, alias in (("priority", "priority"), ("service_level", "serviceLevel")):
            if getattr(classes[kv], attr) == getattr(classes[coll], attr):
                problems.append(
                    Problem(
                        f"{field}[{kv}].{alias}",
                        f"equals the collectives class's {alias}: KV traffic would share "
                        "its queue and not be isolated",
                    )
                )
    return problems


_NEEDS_MASTER = ("macvlan", "ipvlan", "host-device")
_NEEDS_RANGE = ("whereabouts", "host-local")


def _attachment_problems(attachments: list[AttachmentSpec]) -> list[Problem]:
    field = "spec.network.attachments"
    problems = []
    for dup in _duplicates(a.name for a in attachments):
        problems.append(Problem(field, f"two attachments are named {dup!r}"))
    for dup in _duplicates(a.interface for a in attachments if a.interface):
        problems.append(Problem(field, f"two attachments use pod interface {dup!r}"))
    for i, a in enumerate(attachments):
        at = f"{field}[{i}]"
        if a.cni_type in _NEEDS_MASTER and not a.master:
            problems.append(Problem(f"{at}.master", f"required for cniType {a.cni_type}"))
        if a.cni_type == "sriov" and not a.rdma_resource:
            problems.append(
                Problem(f"{at}.rdmaResource", "required for cniType sriov (the VF resource)")
            )
        if a.ipam.type in _NEEDS_RANGE and not a.ipam.range:
            problems.append(Problem(f"{at}.ipam.range", f"required for ipam type {a.ipam.type}"))
    return problems


def _pool_problems(pool: NodePool, field: str) -> list[Problem]:
    problems = []
    if not pool.node_selector and not pool.match_expressions:
        problems.append(
            Problem(field, "select the nodes with nodeSelector or matchExpressions (selects all)")
        )
    for i, expr in enumerate(pool.match_expressions):
        at = f"{field}.matchExpressions[{i}].values"
        if expr.operator in ("In", "NotIn") and not expr.values:
            problems.append(Problem(at, f"operator {expr.operator} needs at least one value"))
        if expr.operator in ("Exists", "DoesNotExist") and expr.values:
            problems.append(Problem(at, f"operator {expr.operator} takes no values"))
        if expr.operator in ("Gt", "Lt") and (
            len(expr.values) != 1 or not expr.values[0].lstrip("-").isdigit()
        ):
            problems.append(Problem(at, f"operator {expr.operator} needs one integer value"))
    for i, tol in enumerate(pool.tolerations):
        if tol.operator == "Exists" and tol.value:
            problems.append(
                Problem(f"{field}.tolerations[{i}].value", "must be empty with operator Exists")
            )
    return problems


def _node_problems(spec: DualPathClusterSpec) -> list[Problem]:
    prefill, decode = spec.nodes.prefill, spec.nodes.decode
    problems = _pool_problems(prefill, "spec.nodes.prefill")
    problems += _pool_problems(decode, "spec.nodes.decode")
    same = prefill.node_selector == decode.node_selector and (
        prefill.match_expressions == decode.match_expressions
    )
    if same and (prefill.node_selector or prefill.match_expressions):
        problems.append(
            Problem(
                "spec.nodes.decode",
                "selects the same nodes as spec.nodes.prefill; a node has one role",
            )
        )
    return problems


def _env_problems(env_names: list[str], field: str) -> list[Problem]:
    return [
        Problem(
            f"{field}[{i}].name",
            f"{name} is set by the operator from the spec; change the spec field instead",
        )
        for i, name in enumerate(env_names)
        if name.startswith(MANAGED_ENV_PREFIXES)
    ]


def _policy_problems(spec: DualPathClusterSpec) -> list[Problem]:
    from dualpath_operator.policy import policy_parameters

    ctl = spec.traffic_controller
    known = policy_parameters(ctl.policy)
    problems = []
    for name, value in ctl.parameters.extra.items():
        field = f"spec.trafficController.parameters.extra.{name}"
        if name not in known:
            problems.append(
                Problem(
                    field, f"policy {ctl.policy} has no such parameter; known: {', '.join(known)}"
                )
            )
            continue
        try:
            float(value)
        except ValueError:
            problems.append(Problem(field, f"{value!r} is not a number"))
    return problems


def _workload_problems(spec: DualPathClusterSpec) -> list[Problem]:
    agent, ctl = spec.agent, spec.traffic_controller
    problems = []
    if agent.grpc_port == agent.metrics_port:
        problems.append(Problem("spec.agent.metricsPort", "must differ from spec.agent.grpcPort"))
    if ctl.port == ctl.metrics_port:
        problems.append(
            Problem(
                "spec.trafficController.metricsPort", "must differ from spec.trafficController.port"
            )
        )
    if parse_quantity(agent.host_buffer) <= 0:
        problems.append(Problem("spec.agent.hostBuffer", "must be positive"))
    mem_limit = agent.resources.limits.get("memory")
    if mem_limit is not None:
        try:
            limit = parse_quantity(mem_limit)
        except ValueError as exc:
            problems.append(Problem("spec.agent.resources.limits.memory", str(exc)))
        else:
            if parse_quantity(agent.host_buffer) > limit:
                problems.append(
                    Problem(
                        "spec.agent.hostBuffer",
                        f"{agent.host_buffer} does not fit in the memory limit {mem_limit}",
                    )
                )
    problems += _quantity_problems(
        [
            ("spec.agent.resources", agent.resources),
            ("spec.trafficController.resources", ctl.resources),
        ]
    )
    max_unavailable = agent.update_strategy.max_unavailable
    if isinstance(max_unavailable, str) and not _PERCENT.match(max_unavailable):
        problems.append(
            Problem(
                "spec.agent.updateStrategy.maxUnavailable",
                f"{max_unavailable!r} is neither a count nor a percentage like 25%",
            )
        )
    if isinstance(max_unavailable, int) and max_unavailable < 0:
        problems.append(Problem("spec.agent.updateStrategy.maxUnavailable", "must be >= 0"))
    if spec.monitoring.service_monitor and not spec.monitoring.metrics:
        problems.append(
            Problem("spec.monitoring.serviceMonitor", "needs spec.monitoring.metrics: true")
        )
    problems += _policy_problems(spec)
    problems += _env_problems([e.name for e in agent.extra_env], "spec.agent.extraEnv")
    problems += _env_problems([e.name for e in ctl.extra_env], "spec.trafficController.extraEnv")
    return problems


def _pod_security_problems(spec: DualPathClusterSpec) -> list[Problem]:
    agent = spec.agent
    if agent.run_as_non_root is not True:
        return []
    if spec.storage.backend == "hostPath":
        # The kubelet creates the hostPath directory root-owned (DirectoryOrCreate), and
        # fsGroup does not apply to hostPath volumes: a non-root agent could not write it.
        return [
            Problem(
                "spec.agent.runAsNonRoot",
                "the hostPath backend's directory is root-owned; use pvc or "
                "sharedFilesystem, or leave runAsNonRoot unset",
            )
        ]
    if agent.privileged:
        return [Problem("spec.agent.runAsNonRoot", "contradicts spec.agent.privileged: true")]
    return []


def _network_policy_problems(spec: DualPathClusterSpec) -> list[Problem]:
    # A NetworkPolicy peer needs at least one selector; `{}` would be rejected by the API
    # server when the operator applies the policy, far from the field that caused it.
    problems = []
    np = spec.network_policy
    for name, peers in (("metricsFrom", np.metrics_from), ("clientsFrom", np.clients_from)):
        for i, peer in enumerate(peers):
            if peer.namespace_selector is None and peer.pod_selector is None:
                problems.append(
                    Problem(
                        f"spec.networkPolicy.{name}[{i}]",
                        "give a namespaceSelector, a podSelector or both",
                    )
                )
    return problems


# vLLM flags the operator derives from the spec, and the field that sets each.
ENGINE_FLAGS_SET_BY_OPERATOR = {
    "--model": "spec.engines.model",
    "--served-model-name": "spec.engines.model.servedModelName",
    "--host": "(the pod's address)",
    "--port": "spec.engines.port",
    "--block-size": "spec.storage.blockTokens",
    "--kv-transfer-config": "(the connector ConfigMap)",
}


def _engine_arg_problems(args: list[str], field: str) -> list[Problem]:
    problems = []
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in ENGINE_FLAGS_SET_BY_OPERATOR:
            problems.append(
                Problem(
                    f"{field}[{i}]",
                    f"{flag} is set by the operator from {ENGINE_FLAGS_SET_BY_OPERATOR[flag]}",
                )
            )
    return problems


def _engines_problems(spec: DualPathClusterSpec) -> list[Problem]:
    engines = spec.engines
    if engines is None:
        return []
    problems = []
    if engines.managed:
        if not engines.image:
            problems.append(
                Problem(
                    "spec.engines.image", "required when an engine role has instancesPerNode > 0"
                )
            )
        if engines.model is None:
            problems.append(
                Problem(
                    "spec.engines.model", "required when an engine role has instancesPerNode > 0"
                )
            )
    model = engines.model
    if model is not None:
        given = [
            name
            for name, value in (
                ("pvc", model.pvc),
                ("hostPath", model.host_path),
                ("generated", model.generated),
            )
            if value is not None
        ]
        if len(given) != 1:
            problems.append(
                Problem(
                    "spec.engines.model",
                    "give exactly one of pvc, hostPath or generated"
                    + (f", not {' and '.join(given)}" if given else ""),
                )
            )
    problems += _engine_arg_problems(engines.extra_args, "spec.engines.extraArgs")
    for role in ("prefill", "decode"):
        role_spec = engines.prefill if role == "prefill" else engines.decode
        problems += _engine_arg_problems(role_spec.extra_args, f"spec.engines.{role}.extraArgs")
    problems += _env_problems([e.name for e in engines.extra_env], "spec.engines.extraEnv")
    if engines.picker.port == engines.picker.metrics_port:
        problems.append(
            Problem("spec.engines.picker.metricsPort", "must differ from spec.engines.picker.port")
        )
    problems += _quantity_problems(
        [
            ("spec.engines.prefill.resources", engines.prefill.resources),
            ("spec.engines.decode.resources", engines.decode.resources),
            ("spec.engines.router.resources", engines.router.resources),
            ("spec.engines.picker.resources", engines.picker.resources),
        ]
    )
    return problems


def _quantity_problems(resources: list[tuple[str, ResourceRequirements]]) -> list[Problem]:
    problems = []
    for where, spec in resources:
        for kind, values in (("requests", spec.requests), ("limits", spec.limits)):
            for name, value in values.items():
                try:
                    parse_quantity(value)
                except ValueError as exc:
                    problems.append(Problem(f"{where}.{kind}.{name}", str(exc)))
    return problems
