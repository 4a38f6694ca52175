"""`dualpath-split` (ours, beyond the paper): the paper's engine choice, then one request's
cached bytes are split across both storage NICs so the storage NICs finish together.

With Q the bytes already queued, bw the SNIC read bandwidth and B the request's cached
bytes, reading a fraction f on the decode side finishes at
    T_pe = (Q_pe + (1 - f) B) / bw_pe      and      T_de = (Q_de + f B) / bw_de.
T_pe = T_de gives  f = (bw_de (Q_pe + B) - bw_pe Q_de) / (B (bw_pe + bw_de)),  clamped to
[0, 1] (`balanced_de_fraction`). It is evaluated twice:
- two-node: Q and bw of the two chosen engines' nodes (this request's own latency);
- pooled: Q and bw summed over every node serving the role (all prefill nodes' SNICs against
  all decode nodes'). With idle queues the two-node rule says 1/2, which sends half of all
  bytes to the prefill nodes; when decode nodes outnumber them (2P4D) that leaves each
  prefill SNIC reading about twice what a decode SNIC reads. The pooled rule says
  bw_D / (bw_P + bw_D) (2/3 for 2P4D), i.e. the same bytes on every SNIC.
f = pool_weight * pooled + (1 - pool_weight) * two-node. Pooled alone balances the SNICs
best but ignores the chosen node's own backlog (a little throughput lost in the simulator);
the 0.5 default keeps both (sim, 2P4D 64K: SNIC max/avg 1.21 -> ~1.02, throughput >= paper).
When one side is much better f clamps to 0 or 1 (pure PE_READ / DE_READ); a split thinner
than `min_split_fraction`, or a read smaller than `min_split_bytes`, is not worth two
transfers and goes whole to the side that finishes first.
"""

from __future__ import annotations

from dualpath_controller.policy.base import ParamSpec, PathChoice, path_shorter_queue
from dualpath_controller.policy.paper import ALPHA, BETA, PaperPolicy, Z
from dualpath_controller.policy.types import EngineScore, EngineState, ReadPath, Request, Role
from dualpath_controller.policy.view import ClusterView


def balanced_de_fraction(
    pe_queue_bytes: float, de_queue_bytes: float, read_bytes: float, bw_pe: float, bw_de: float
) -> float:
    """Fraction of `read_bytes` to read on the decode side so both sides finish together."""
    f = (bw_de * (pe_queue_bytes + read_bytes) - bw_pe * de_queue_bytes) / (
        read_bytes * (bw_pe + bw_de)
    )
    return min(1.0, max(0.0, f))


def _pool(view: ClusterView, role: Role, node: str, default_bw: float) -> tuple[float, float]:
    """(queued bytes, read bandwidth) summed over the SNICs of every node serving `role`
    (always including `node`, the one this request's engine sits on)."""
    nodes = view.role_nodes(role)
    if node not in nodes:
        nodes = (*nodes, node)
    queued = 0.0
    bandwidth = 0.0
    for node_id in nodes:
        state = view.nodes[node_id]
        queued += state.read_queue_bytes
        bandwidth += state.snic_read_bytes_per_s or default_bw
    return queued, bandwidth


class DualPathSplitPolicy(PaperPolicy):
    name = "dualpath-split"
    description = "ours: paper's engine choice, cached bytes split so both SNICs finish together"
    PARAMS = {
        "alpha": ALPHA,
        "beta": BETA,
        "z": Z,
        "min_split_fraction": ParamSpec(
            0.05, 0.0, 0.5, "a side's share below this is folded into the other side"
        ),
        "min_split_bytes": ParamSpec(
            0, 0, 1e15, "reads smaller than this are never split", integer=True
        ),
        "pool_weight": ParamSpec(
            0.5, 0.0, 1.0, "weight of the all-nodes (pooled) fraction against the two-node one"
        ),
        "default_snic_bytes_per_s": ParamSpec(
            50e9, 1.0, 1e13, "SNIC read bandwidth assumed when a node reports none"
        ),
    }

    def choose_path(
        self, view: ClusterView, pe: EngineState, de: EngineState, request: Request
    ) -> PathChoice:
        read_bytes = request.cached_bytes
        if request.cached_tokens == 0:
            return PathChoice(ReadPath.PE_READ, 0.0, "nothing-cached", ())
        if read_bytes == 0:
            # Bytes unknown (no kv_bytes_per_token): fall back to the paper's queue rule.
            return path_shorter_queue(view, pe, de, request)
        if pe.node == de.node:
            return PathChoice(ReadPath.PE_READ, 0.0, "same-node", ())
        default_bw = self.params["default_snic_bytes_per_s"]
        pe_node = view.nodes[pe.node]
        de_node = view.nodes[de.node]
        bw_pe = pe_node.snic_read_bytes_per_s or default_bw
        bw_de = de_node.snic_read_bytes_per_s or default_bw
        q_pe = pe_node.read_queue_bytes
        q_de = de_node.read_queue_bytes
        pool_q_pe, pool_bw_pe = _pool(view, Role.PREFILL, pe.node, default_bw)
        pool_q_de, pool_bw_de = _pool(view, Role.DECODE, de.node, default_bw)
        f_nodes = balanced_de_fraction(q_pe, q_de, read_bytes, bw_pe, bw_de)
        f_pools = balanced_de_fraction(pool_q_pe, pool_q_de, read_bytes, pool_bw_pe, pool_bw_de)
        w = self.params["pool_weight"]
        f = w * f_pools + (1.0 - w) * f_nodes
        t_pe_only = (q_pe + read_bytes) / bw_pe
        t_de_only = (q_de + read_bytes) / bw_de
        thin = self.params["min_split_fraction"]
        if 0.0 < f < 1.0 and (read_bytes < self.params["min_split_bytes"] or min(f, 1 - f) < thin):
            f = 1.0 if t_de_only < t_pe_only else 0.0
            rule = "split-not-worth-it"
        elif f <= 0.0:
            rule = "pe-side-much-better"
        elif f >= 1.0:
            rule = "de-side-much-better"
        else:
            rule = "balanced-split"
        if f <= 0.0:
            path, f = ReadPath.PE_READ, 0.0
        elif f >= 1.0:
            path, f = ReadPath.DE_READ, 1.0
        else:
            path = ReadPath.SPLIT
        t_pe = (q_pe + (1 - f) * read_bytes) / bw_pe if f < 1 else 0.0
        t_de = (q_de + f * read_bytes) / bw_de if f > 0 else 0.0
        scores = (
            EngineScore(pe.node, "pe-node-read-queue-bytes", q_pe),
            EngineScore(de.node, "de-node-read-queue-bytes", q_de),
            EngineScore(pe.node, "pe-only-finish-s", t_pe_only),
            EngineScore(de.node, "de-only-finish-s", t_de_only),
            EngineScore("", "two-node-de-fraction", f_nodes),
            EngineScore("", "pooled-de-fraction", f_pools),
            EngineScore("", "expected-finish-s", max(t_pe, t_de)),
        )
        return PathChoice(path, f, rule, scores)
