"""The DualPathCluster API (dualpath.io/v1alpha1): the single source of truth.

These pydantic models define the fields, defaults, enums and bounds. `crd.py` turns them into
the CRD's structural OpenAPI v3 schema (so the API server enforces them), and the operator
parses every object with them (so the operator and the API server agree on defaults). Rules
the schema cannot express are in `validation.py`.

Python attributes are snake_case; the Kubernetes field names are their camelCase aliases.
Field descriptions become `kubectl explain` text: write them for the platform engineer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from dualpath_common.models import MODEL_PRESETS
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict

from dualpath_operator.constants import DEFAULT_IMAGE

# Kubernetes resource quantity ("4Gi", "500M", "2"): validated by pattern, parsed by
# `quantity.parse_quantity` where the operator needs bytes.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]
# Resource requests/limits accept integers or quantity strings, like core Kubernetes.
IntOrString = int | str
# Object names: DNS-1123 labels (they become parts of child names).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=40)]
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h)$"
ABSOLUTE_PATH_PATTERN = r"^/.*"
RESOURCE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

if TYPE_CHECKING:
    ModelPresetName = str
else:  # the enum of presets, from the one table every component shares
    ModelPresetName = Literal[tuple(sorted(MODEL_PRESETS))]
PolicyName = Literal["paper", "prefill-only", "round-robin", "dualpath-split"]
Role = Literal["prefill", "decode"]


def list_map(key: str) -> JsonDict:
    """Schema extension: a list of objects keyed by `key` (the API server rejects
    duplicate keys, and server-side apply merges entries by key)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected (the API server prunes them anyway;
    the operator must not silently ignore a field it does not understand)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )


# --- nodes -----------------------------------------------------------------------------


class NodeSelectorRequirement(ApiModel):
    """A node label requirement (same meaning as in a Pod's node affinity)."""

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] = Field(default_factory=list, max_length=64)


class Toleration(ApiModel):
    """A Pod toleration, so agents can run on tainted GPU nodes."""

    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class NodePool(ApiModel):
    """Which nodes run this role's agents: nodeSelector labels AND matchExpressions."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels that must all match."
    )
    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list,
        max_length=16,
        description="Extra node label requirements (node affinity, all must hold).",
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    gpus_per_node: int = Field(
        default=8,
        ge=1,
        le=16,
        description="GPUs (engines) per node of this role; one engine per GPU.",
    )


class PrefillPool(NodePool):
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"dualpath.io/role": "prefill"},
        description="Node labels that must all match.",
    )


class DecodePool(NodePool):
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"dualpath.io/role": "decode"},
        description="Node labels that must all match.",
    )


class NodesSpec(ApiModel):
    """Prefill and decode node pools (prefill/decode disaggregation)."""

    prefill: PrefillPool = Field(default_factory=lambda: PrefillPool())
    decode: DecodePool = Field(default_factory=lambda: DecodePool())


# --- storage ---------------------------------------------------------------------------


class ModelSpec(ApiModel):
    """KV-cache geometry of the served model: a named preset, or layers and
    bytesPerTokenLayer given explicitly (exactly one of the two)."""

    preset: ModelPresetName | None = Field(default=None, description="Named model preset.")
    layers: int | None = Field(default=None, ge=1, le=1024, description="Transformer layers.")
    bytes_per_token_layer: int | None = Field(
        default=None, ge=1, le=1 << 24, description="KV bytes one token occupies in one layer."
    )


class PvcSource(ApiModel):
    claim_name: str = Field(min_length=1, max_length=253)
    read_only: bool = False


class StorageSpec(ApiModel):
    """Where KV blocks live and how fast the node's storage NIC is."""

    backend: Literal["hostPath", "sharedFilesystem", "pvc"] = Field(
        default="hostPath",
        description=(
            "hostPath: a local NVMe directory on each node (created if missing); "
            "sharedFilesystem: a distributed filesystem already mounted at `path` on every "
            "node (must exist); pvc: a ReadWriteMany PersistentVolumeClaim."
        ),
    )
    path: str = Field(
        default="/var/lib/dualpath/kv",
        pattern=ABSOLUTE_PATH_PATTERN,
        max_length=1024,
        description="Node path (hostPath, sharedFilesystem) of the KV block store.",
    )
    pvc: PvcSource | None = Field(default=None, description="The claim, when backend is pvc.")
    mount_path: str = Field(
        default="/var/lib/dualpath/kv",
        pattern=ABSOLUTE_PATH_PATTERN,
        max_length=1024,
        description="Where the store is mounted inside the agent container.",
    )
    capacity: Quantity = Field(default="100Gi", description="Bytes the agent may keep per node.")
    block_tokens: int = Field(default=64, ge=1, le=65536, description="Tokens per KV block.")
    model: ModelSpec = Field(description="KV-cache geometry of the served model.")
    storage_nic_gbps: float = Field(
        default=400.0, gt=0, le=3200, description="Storage NIC bandwidth per node (Gbit/s)."
    )
    read_bandwidth_cap_gbps: float | None = Field(
        default=None,
        gt=0,
        le=3200,
        description="Emulate a slower storage NIC: cap agent reads (Gbit/s). Off when unset.",
    )


# --- network ---------------------------------------------------------------------------


class IpamSpec(ApiModel):
    """IP address management for a secondary (RDMA) interface, as CNI IPAM config."""

    type: Literal["whereabouts", "host-local", "static", "dhcp"] = "whereabouts"
    range: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$",
        description="CIDR to allocate from (whereabouts, host-local).",
    )
    gateway: str | None = Field(default=None, max_length=45)


class AttachmentSpec(ApiModel):
    """One RDMA/RoCE network interface in the agent pods: a Multus
    NetworkAttachmentDefinition plus the RDMA device resource to request."""

    name: DnsLabel
    cni_type: Literal["macvlan", "ipvlan", "host-device", "sriov"] = Field(
        default="macvlan", description="CNI plugin creating the interface."
    )
    master: str | None = Field(
        default=None, max_length=15, description="Host interface (macvlan, ipvlan, host-device)."
    )
    interface: str | None = Field(
        default=None, max_length=15, description="Interface name inside the pod (default net<N>)."
    )
    mtu: int | None = Field(default=None, ge=576, le=9216)
    ipam: IpamSpec = Field(default_factory=lambda: IpamSpec())
    rdma_resource: str | None = Field(
        default=None,
        pattern=RESOURCE_NAME_PATTERN,
        max_length=253,
        description="Device-plugin resource to request, e.g. rdma/rdma_shared_device_a.",
    )
    rdma_resource_count: int = Field(default=1, ge=1, le=64)


class QosClass(ApiModel):
    """A traffic class on the compute network. DualPath keeps KV-cache transfers in a
    low-priority class so model collectives keep their bandwidth (paper section 5)."""

    name: DnsLabel
    purpose: Literal["kvCache", "collectives"]
    dscp: int = Field(ge=0, le=63, description="DSCP codepoint (RoCEv2 / IP_TOS for TCP).")
    traffic_class: int | None = Field(
        default=None,
        ge=0,
        le=255,
        description="IB/RoCE traffic class byte (UCX_IB_TRAFFIC_CLASS, NCCL_IB_TC); "
        "default dscp*4.",
    )
    service_level: int = Field(default=0, ge=0, le=15, description="InfiniBand service level.")
    priority: int = Field(default=0, ge=0, le=7, description="PFC / 802.1p priority.")
    bandwidth_percent: int = Field(
        default=1, ge=1, le=100, description="Weighted-round-robin share of the link."
    )


def default_qos_classes() -> list[QosClass]:
    # The paper's InfiniBand setup: collectives on a high-priority lane with ~99% of the
    # weighted bandwidth, KV on a low-priority lane (it still uses idle bandwidth).
    return [
        QosClass(
            name="collectives",
            purpose="collectives",
            dscp=26,
            service_level=1,
            priority=3,
            bandwidth_percent=99,
        ),
        QosClass(
            name="kv-cache",
            purpose="kvCache",
            dscp=10,
            service_level=0,
            priority=1,
            bandwidth_percent=1,
        ),
    ]


class NetworkSpec(ApiModel):
    """Compute-network attachments and QoS for KV traffic vs model collectives."""

    attachments: list[AttachmentSpec] = Field(
        default_factory=list, max_length=8, json_schema_extra=list_map("name")
    )
    qos: list[QosClass] = Field(
        default_factory=default_qos_classes, max_length=8, json_schema_extra=list_map("name")
    )
    gid_index: int = Field(
        default=3, ge=0, le=255, description="RoCE GID index (UCX_IB_GID_INDEX, NCCL_IB_GID_INDEX)."
    )
    tcp_fallback: bool = Field(
        default=True,
        description="Allow KV transfers over TCP when RDMA is unavailable. When false, UCX "
        "is told not to use TCP, so a missing RDMA setup fails loudly.",
    )
    ucx_net_devices: str | None = Field(
        default=None, max_length=256, description="UCX_NET_DEVICES."
    )
    nccl_ib_hca: str | None = Field(default=None, max_length=256, description="NCCL_IB_HCA.")


# --- workloads -------------------------------------------------------------------------


class ResourceRequirements(ApiModel):
    requests: dict[str, IntOrString] = Field(default_factory=dict)
    limits: dict[str, IntOrString] = Field(default_factory=dict)


class EnvVar(ApiModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    # No "" default: a v1.20 API server rejects empty-string defaults in CRDs as null.
    value: str | None = Field(default=None, max_length=4096)


class UpdateStrategy(ApiModel):
    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    max_unavailable: IntOrString = Field(
        default=1, description="Agents (count or percent) that may be down during a roll."
    )


LogLevel = Literal["debug", "info", "warning", "error"]


class AgentSpec(ApiModel):
    """The per-node KV agents (one DaemonSet per role)."""

    image: str | None = Field(default=None, max_length=512, description="Overrides spec.image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: list[str] = Field(default_factory=lambda: ["dualpath"], max_length=16)
    args: list[str] = Field(
        default_factory=list, max_length=64, description="Replaces the default arguments."
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=64, description="Appended to the arguments."
    )
    resources: ResourceRequirements = Field(default_factory=lambda: ResourceRequirements())
    host_buffer: Quantity = Field(
        default="2Gi", description="Registered host-DRAM buffer per node."
    )
    gpu_memory_budget: Quantity = Field(
        default="0", description="GPU memory per engine the agent may use for KV staging."
    )
    grpc_port: int = Field(default=50061, ge=1, le=65535)
    metrics_port: int = Field(default=9101, ge=1, le=65535)
    update_strategy: UpdateStrategy = Field(default_factory=lambda: UpdateStrategy())
    privileged: bool = Field(
        default=False, description="Run privileged. Off: agents get only IPC_LOCK (memory pinning)."
    )
    run_as_non_root: bool | None = Field(
        default=None,
        description="Run the agent as the image's non-root user (uid/gid 65532, fsGroup 65532)."
        " Unset: non-root for the pvc and sharedFilesystem backends, root for hostPath (its"
        " directory is created root-owned). A non-root agent is not given IPC_LOCK: Kubernetes"
        " sets no ambient capabilities, so it could not use it. It then pins its host buffer"
        " and registers RDMA memory only within the node runtime's RLIMIT_MEMLOCK; set false"
        " (root with IPC_LOCK) where that limit is too small for hostBuffer. A sharedFilesystem"
        " directory must be writable by uid or gid 65532 (fsGroup does not apply to it).",
    )
    host_network: bool = Field(
        default=False,
        description="Agents on the node's network. NetworkPolicy does not apply to"
        " host-network pods on most CNIs: the operator then creates no agent NetworkPolicy"
        " and opens the controller's gRPC port to any source (TLS still applies).",
    )
    priority_class_name: str | None = Field(default=None, max_length=253)
    log_level: LogLevel = "info"
    extra_env: list[EnvVar] = Field(default_factory=list, max_length=64)


class PolicyParameters(ApiModel):
    """Scheduling policy knobs (paper section 6). Token thresholds may be given directly,
    or derived: alpha from the storage NIC bandwidth and the model's KV bytes per token."""

    alpha_tokens: int | None = Field(
        default=None,
        ge=0,
        le=10**12,
        description="PE preference threshold on a node's storage read queue, in tokens. "
        "Unset: the tokens one storage NIC reads in alphaSeconds.",
    )
    alpha_seconds: float = Field(default=3.0, gt=0, le=3600)
    beta_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="Overload threshold on an engine's unfinished tokens. Unset: "
        "prefillTokensPerSecond x betaSeconds, or the controller's default.",
    )
    beta_seconds: float = Field(default=5.0, gt=0, le=3600)
    prefill_tokens_per_second: int | None = Field(
        default=None, ge=1, le=10**9, description="Tokens one prefill engine processes per second."
    )
    decode_balance_factor: float = Field(
        default=1.05, ge=1, le=10, description="Z rule factor (decode engine choice)."
    )
    compute_quota_ms: int = Field(
        default=300, ge=1, le=60000, description="Prefill batch quota (engines read it)."
    )
    engine_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="Drain an engine that has not reported this long."
    )
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="Further parameters of the chosen policy by name (e.g. min_split_fraction "
        "for dualpath-split); checked against the policy.",
    )


class PodDisruptionBudgetSpec(ApiModel):
    enabled: bool = True
    max_unavailable: int = Field(default=1, ge=0, le=100)


class TrafficControllerSpec(ApiModel):
    """The central request scheduler (traffic controller)."""

    image: str | None = Field(default=None, max_length=512, description="Overrides spec.image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = Field(default=1, ge=1, le=5)
    policy: PolicyName = "paper"
    parameters: PolicyParameters = Field(default_factory=lambda: PolicyParameters())
    port: int = Field(default=50051, ge=1, le=65535, description="gRPC port.")
    metrics_port: int = Field(default=9100, ge=1, le=65535)
    tls_secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Superseded by mutual TLS (spec.security.mtls), which is always on: the"
        " controller serves gRPC with its role certificate (Secret <cluster>-controller-tls)"
        " and requires one from every caller. Still accepted; the CertificatesReady condition"
        " says it is not used. (Components run outside the operator keep server-only TLS"
        " with --tls-cert-file.)",
    )
    command: list[str] = Field(default_factory=lambda: ["dualpath"], max_length=16)
    args: list[str] = Field(default_factory=list, max_length=64)
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    resources: ResourceRequirements = Field(default_factory=lambda: ResourceRequirements())
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(
        default_factory=lambda: PodDisruptionBudgetSpec()
    )
    log_level: LogLevel = "info"
    extra_env: list[EnvVar] = Field(default_factory=list, max_length=64)


class MonitoringSpec(ApiModel):
    metrics: bool = Field(
        default=True, description="Expose Prometheus metrics ports and annotations."
    )
    service_monitor: bool = Field(
        default=False,
        description="Create a ServiceMonitor (when the Prometheus Operator CRD exists).",
    )
    scrape_interval: str = Field(default="30s", pattern=DURATION_PATTERN)
    service_monitor_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels your Prometheus selects ServiceMonitors by."
    )


# --- security --------------------------------------------------------------------------

IssuerMode = Literal["auto", "operator", "cert-manager"]


class MtlsSpec(ApiModel):
    """Mutual TLS between every component (always on): each role (agent, controller,
    router, engine) gets a certificate naming its SPIFFE id
    (spiffe://dualpath.io/ns/<namespace>/dpc/<cluster>/<role>) from a per-cluster CA, in a
    kubernetes.io/tls Secret <cluster>-<role>-tls (ca.crt, tls.crt, tls.key)."""

    issuer: IssuerMode = Field(
        default="auto",
        description="Who issues the certificates. operator: the operator keeps a CA in the "
        "Secret <cluster>-ca and issues and renews every certificate itself; cert-manager: "
        "cert-manager Issuers and Certificates (needs the cert-manager.io CRDs); auto: "
        "cert-manager when its Certificate CRD is served, else the operator.",
    )
    certificate_days: int = Field(
        default=30,
        ge=1,
        le=90,
        description="Lifetime of each role certificate, in days (the CA lives 365 days).",
    )
    renew_before_fraction: float = Field(
        default=0.33,
        ge=0.05,
        le=0.9,
        description="Renew a certificate when less than this fraction of its lifetime is left.",
    )


class SecuritySpec(ApiModel):
    """Transport security of the cluster's own traffic."""

    mtls: MtlsSpec = Field(default_factory=lambda: MtlsSpec())


# --- network policy ----------------------------------------------------------------------

# Namespaces carrying this label may scrape the agents' and controller's metrics ports
# (the default spec.networkPolicy.metricsFrom): `kubectl label ns monitoring <label>=true`.
METRICS_SCRAPER_NAMESPACE_LABEL = "dualpath.io/metrics-scraper"


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)


class NetworkPolicyPeer(ApiModel):
    """Pods let in, as in a NetworkPolicy peer: both selectors must match. Without a
    namespaceSelector the pods are in the cluster's own namespace; without a podSelector,
    every pod of the selected namespaces."""

    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None


def default_metrics_from() -> list[NetworkPolicyPeer]:
    return [
        NetworkPolicyPeer(
            namespace_selector=LabelSelector(match_labels={METRICS_SCRAPER_NAMESPACE_LABEL: "true"})
        )
    ]


class NetworkPolicySpec(ApiModel):
    """NetworkPolicies that let into the agents and the traffic controller only this
    cluster's own pods (agents, controller, and engines and routers labelled
    dualpath.io/cluster=<name> in its namespace), clientsFrom, and the metrics scrapers."""

    enabled: bool = Field(default=True, description="Create the NetworkPolicies.")
    metrics_from: list[NetworkPolicyPeer] = Field(
        default_factory=default_metrics_from,
        max_length=16,
        description="Who may scrape the metrics ports. Default: every pod in namespaces "
        "labelled dualpath.io/metrics-scraper=true.",
    )
    clients_from: list[NetworkPolicyPeer] = Field(
        default_factory=list,
        max_length=16,
        description="Further clients of the agents and the controller, e.g. engines or a "
        "router in another namespace.",
    )


# --- engines ---------------------------------------------------------------------------


class EngineModelSource(ApiModel):
    """The served model's files: exactly one of pvc, hostPath or generated. The engines
    mount it read-only at /models and load `/models/<path>`."""

    pvc: PvcSource | None = Field(default=None, description="A claim holding the model files.")
    host_path: str | None = Field(
        default=None,
        max_length=4096,
        pattern=ABSOLUTE_PATH_PATTERN,
        description="A directory on every engine node holding the model files.",
    )
    generated: Literal["tiny-llama"] | None = Field(
        default=None,
        description="Made at pod start by an init container, for tests: the project's tiny "
        "Llama-shaped model (random weights from a fixed seed, its own tokenizer).",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^[^/].*$",
        description="The model directory inside the volume (relative; absent: its root, or "
        "the generated model's name).",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        description="The model name clients send (vLLM's --served-model-name); also the root "
        "of the KV block hash chains. Default: the model directory as the engines see it.",
    )


class EngineRoleSpec(ApiModel):
    """The vLLM engines of one role (prefill or decode)."""

    instances_per_node: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Engines on each node of the role's pool (one GPU set each). 0: none "
        "managed; attached engines of this role may still be labelled in.",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(),
        description="Per engine, GPUs included (e.g. limits: {nvidia.com/gpu: 1}).",
    )
    extra_args: list[str] = Field(
        default_factory=list, max_length=64, description="vLLM arguments for this role only."
    )


class RouterSpec(ApiModel):
    """`dualpath router`: the OpenAI-compatible front door of the cluster's engines."""

    image: str | None = Field(default=None, max_length=512, description="Overrides spec.image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = Field(default=1, ge=1, le=16)
    port: int = Field(
        default=8000, ge=1, le=65535, description="HTTP port (pod and Service); /metrics too."
    )
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    resources: ResourceRequirements = Field(default_factory=lambda: ResourceRequirements())
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    log_level: LogLevel = "info"


class PickerSpec(ApiModel):
    """The endpoint picker of the InferencePool (Gateway API Inference Extension): an Envoy
    ext_proc server that asks the traffic controller. Deployed only where the cluster serves
    inference.networking.k8s.io/v1 InferencePool."""

    replicas: int = Field(default=1, ge=1, le=16)
    port: int = Field(default=9002, ge=1, le=65535, description="ext_proc gRPC port.")
    metrics_port: int = Field(default=9003, ge=1, le=65535)
    resources: ResourceRequirements = Field(default_factory=lambda: ResourceRequirements())
    extra_args: list[str] = Field(default_factory=list, max_length=64)


class EnginesSpec(ApiModel):
    """vLLM engines served through DualPath. Managed engines run beside each role node's
    agent, their KV connector set to that node's agent; attached engines (your own pods,
    labelled dualpath.io/cluster and dualpath.io/engine) join the same router."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Engine image (vLLM + the DualPath connector); required when any role "
        "has instancesPerNode > 0.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    model: EngineModelSource | None = Field(
        default=None, description="Required when any role has instancesPerNode > 0."
    )
    port: int = Field(default=8000, ge=1, le=65535, description="vLLM's HTTP port.")
    extra_args: list[str] = Field(
        default_factory=list, max_length=64, description="vLLM arguments for every engine."
    )
    extra_env: list[EnvVar] = Field(default_factory=list, max_length=64)
    prefill: EngineRoleSpec = Field(default_factory=lambda: EngineRoleSpec())
    decode: EngineRoleSpec = Field(default_factory=lambda: EngineRoleSpec())
    load_mode: Literal["layerwise", "async"] = Field(
        default="layerwise",
        description="layerwise: prefill computes layer i once layer i landed (the paper's); "
        "async: vLLM parks a request until its whole load landed.",
    )
    router: RouterSpec = Field(default_factory=lambda: RouterSpec())
    picker: PickerSpec = Field(default_factory=lambda: PickerSpec())

    @property
    def managed(self) -> bool:
        return self.prefill.instances_per_node > 0 or self.decode.instances_per_node > 0


class DualPathClusterSpec(ApiModel):
    """A DualPath deployment: KV agents on prefill and decode nodes, one traffic
    controller, and the network QoS that keeps KV traffic out of the collectives' way."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=512)
    nodes: NodesSpec = Field(default_factory=lambda: NodesSpec())
    storage: StorageSpec
    network: NetworkSpec = Field(default_factory=lambda: NetworkSpec())
    agent: AgentSpec = Field(default_factory=lambda: AgentSpec())
    traffic_controller: TrafficControllerSpec = Field(
        default_factory=lambda: TrafficControllerSpec()
    )
    monitoring: MonitoringSpec = Field(default_factory=lambda: MonitoringSpec())
    network_policy: NetworkPolicySpec = Field(default_factory=lambda: NetworkPolicySpec())
    security: SecuritySpec = Field(default_factory=lambda: SecuritySpec())
    engines: EnginesSpec | None = Field(
        default=None,
        description="vLLM engines and the router in front of them; absent: agents and the "
        "traffic controller only (engines wired by hand).",
    )


# --- status ----------------------------------------------------------------------------

ConditionType = Literal["Ready", "Progressing", "Degraded", "NetworkReady"]
CONDITION_TYPES: tuple[str, ...] = (
    "Ready",
    "Progressing",
    "Degraded",
    "NetworkReady",
    "MonitoringReady",
    "CertificatesReady",
    "EnginesReady",
    "InferencePoolReady",
)


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="Machine-readable CamelCase reason.")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class RoleAgentsStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    updated: int = 0
    available: int = 0
    summary: str = Field(default="0/0", description="ready/desired, for the printer column.")


class AgentsStatus(ApiModel):
    prefill: RoleAgentsStatus = Field(default_factory=lambda: RoleAgentsStatus())
    decode: RoleAgentsStatus = Field(default_factory=lambda: RoleAgentsStatus())


class ControllerStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    endpoint: str = ""


class RoleEnginesStatus(ApiModel):
    desired: int = 0
    ready: int = 0
    attached: int = Field(default=0, description="Of these, engines you run and labelled in.")
    summary: str = Field(default="0/0", description="ready/desired, for the printer column.")


class EnginesStatus(ApiModel):
    prefill: RoleEnginesStatus = Field(default_factory=lambda: RoleEnginesStatus())
    decode: RoleEnginesStatus = Field(default_factory=lambda: RoleEnginesStatus())
    router_ready: int = 0
    router_endpoint: str = ""


class DualPathClusterStatus(ApiModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    agents: AgentsStatus = Field(default_factory=lambda: AgentsStatus())
    controller: ControllerStatus = Field(default_factory=lambda: ControllerStatus())
    config_hash: str = ""
    pdb_api_version: str = ""
    network_attachments: list[str] = Field(default_factory=list)
    engines: EnginesStatus | None = None
