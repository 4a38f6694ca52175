"""Every number the simulator assumes, in one place, each with its source.

Sources: ../shared/notes/dualpath-paper.md ("the notes"), which summarises arXiv:2602.21548.
Numbers the paper does not give are marked CALIBRATED (fitted so that the simulator lands on
a number the paper does report; the fit is described next to the constant) or ASSUMED (our
engineering guess; the comment says why it is harmless or what it would change).
KV-cache geometry (bytes per token, layers) comes from dualpath_common.models, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GiB = float(1 << 30)

# ----- hardware (paper §2.3, notes "Hardware model") -----

# GPUs (= engines) per node: 8 (paper).
GPUS_PER_NODE = 8
# Storage NIC read bandwidth per node. The NIC is 400 Gbps (~50 GB/s, paper); 3FS reports
# ~40 GiB/s peak KV-cache reads per 400 Gbps client node (notes), which is what a node can
# actually pull, so that is the usable figure.
SNIC_READ_BYTES_PER_S = 36 * GiB
# Writes go the other way on the same full-duplex NIC (ASSUMED: same usable rate as reads).
SNIC_WRITE_BYTES_PER_S = 36 * GiB
# Compute NIC per GPU: 400 Gbps (paper). ASSUMED: KV traffic gets all of it (the paper
# reserves ~99% for collectives only while they are busy; model compute is folded into the
# compute model below), and one NIC carries KV in both directions at this rate combined
# (conservative: the real NIC is full duplex). It is never the bottleneck here (<35% busy).
CNIC_BYTES_PER_S = 50 * GB
# Host DRAM bandwidth per node: ~500 GB/s (paper). Every buffer hop touches it once.
DRAM_BYTES_PER_S = 500 * GB

# ----- engine behaviour (paper §4, §6, §A.4) -----

# Full Block size in tokens: 64 (notes, "e.g. 64"). Only full blocks are persisted, so a
# turn's cache hit is its reusable prefix rounded down to whole blocks.
BLOCK_TOKENS = 64
# A prefill engine packs requests FIFO up to 300 ms of predicted compute and chunks the one
# that would overflow (paper §6).
PREFILL_QUOTA_S = 0.300
# alpha = tokens one node's storage NIC reads in 3 s; beta = tokens one GPU processes in
# 5 s (paper §6). The seconds are the paper's; the rates come from the models below.
ALPHA_SECONDS = 3.0
BETA_SECONDS = 5.0
# Decode group = one node's decode engines (paper §6: "DE group"; the view defaults to it).


@dataclass(frozen=True)
class ComputeProfile:
    """How long one engine (one GPU) computes, for one model.

    prefill(batch) = batch_overhead + sum over requests of
        new_tokens * (per_token + per_token_ctx * (context before the chunk + new_tokens / 2))
      (linear layers per new token; attention grows with the context each new token sees).
    decode step   = step_base + step_per_seq * batch + step_per_ctx_token * tokens in batch
      (one step emits one token for every request in the batch; MoE/collective cost per step,
       per-sequence overheads, and attention reading each sequence's KV from HBM).
    """

    model: str
    prefill_per_token_s: float
    prefill_per_token_ctx_s: float
    prefill_batch_overhead_s: float
    decode_step_base_s: float
    decode_step_per_seq_s: float
    decode_step_per_ctx_token_s: float
    # HBM left for KV cache on one decode engine, in tokens.
    de_kv_capacity_tokens: int
    source: str


# DeepSeek-V3.2 660B (MoE, 37B active, DSA sparse attention), one engine = one H800-class GPU
# of a DP-attention/EP deployment. CALIBRATED on the paper's Table 3 / notes:
#   * 2P4D, 64K trace, 2,000 agents, offline: 3,167 s with DualPath, "close to the Oracle",
#     and Basic ~1.87x slower. Throughput there is ~99 turns/s (314k turns / 3,167 s).
#   * online 2P4D at 0.4 agents/s: TPOT 0.039 s, time-to-second-token 0.228 s.
#   The paper gives no prefill rate (notes, calibration hint). With these numbers a 64K-trace
#   turn (~460 new tokens over a ~33K context) takes ~0.1 s of prefill, so 16 PEs are about
#   half busy at 99 turns/s; a full decode batch (~21 requests of ~33K tokens, limited by
#   de_kv_capacity_tokens) steps in ~37 ms, and 32 DEs * 21 / (176 tokens * 37 ms) ~ 100
#   turns/s is what bounds the Oracle at 2,000 agents. Basic is bound by 2 PE-node SNICs.
DS660B = ComputeProfile(
    model="deepseek-v3.2-660b",
    prefill_per_token_s=110e-6,
    prefill_per_token_ctx_s=2.6e-9,
    prefill_batch_overhead_s=0.010,
    decode_step_base_s=0.017,
    decode_step_per_seq_s=0.55e-3,
    decode_step_per_ctx_token_s=9e-9,
    de_kv_capacity_tokens=900_000,
    source="CALIBRATED to the paper's 2P4D/64K offline point (3,167 s) and online TPOT 39 ms",
)

# Internal DS 27B (1P1D in the paper). Geometry ~20 KB/token (notes). ASSUMED compute: a
# smaller MoE (a few B active), ~4x cheaper per token than 660B, with more HBM left for KV.
# CALIBRATED loosely so that 1P1D on the 64K trace is SNIC-bound for Basic and DualPath gains
# ~1.8x there (paper: up to 1.78x), and the P/D sweep tracks SNIC bandwidth (paper §7).
DS27B = ComputeProfile(
    model="ds-27b",
    prefill_per_token_s=28e-6,
    prefill_per_token_ctx_s=0.8e-9,
    prefill_batch_overhead_s=0.005,
    decode_step_base_s=0.012,
    decode_step_per_seq_s=0.15e-3,
    decode_step_per_ctx_token_s=4e-9,
    de_kv_capacity_tokens=2_400_000,
    source="ASSUMED small-MoE compute; CALIBRATED to be SNIC-bound like the paper's 1P1D",
)

# Qwen2.5-32B (dense, GQA, FP16 KV = 256 KiB/token; 1P2D in the paper). ASSUMED compute for a
# dense 32B on one H800-class GPU (~2 * 32e9 FLOP/token at ~45% of ~990 TFLOP/s BF16 gives
# ~140 us/token) with FP8 weights leaving ~40 GB (~160K tokens) for KV per GPU. At 256 KiB
# per token this model is storage-bound by a wide margin.
QWEN32B = ComputeProfile(
    model="qwen2.5-32b",
    prefill_per_token_s=140e-6,
    prefill_per_token_ctx_s=3.0e-9,
    prefill_batch_overhead_s=0.005,
    decode_step_base_s=0.012,
    decode_step_per_seq_s=0.3e-3,
    decode_step_per_ctx_token_s=25e-9,
    de_kv_capacity_tokens=160_000,
    source="ASSUMED dense-32B compute on one GPU; storage-bound at 256 KiB/token",
)

# A small geometry for tests (dualpath_common.models "tiny-test" has 4 KB/token): same shape
# as DS660B scaled so that reduced presets behave like the big one in seconds of CPU.
TINY = ComputeProfile(
    model="tiny-test",
    prefill_per_token_s=110e-6,
    prefill_per_token_ctx_s=2.6e-9,
    prefill_batch_overhead_s=0.010,
    decode_step_base_s=0.019,
    decode_step_per_seq_s=0.55e-3,
    decode_step_per_ctx_token_s=9e-9,
    de_kv_capacity_tokens=720_000,
    source="tests only: DS660B compute",
)

COMPUTE_PROFILES: dict[str, ComputeProfile] = {p.model: p for p in (DS660B, DS27B, QWEN32B, TINY)}


# ----- workloads (paper Table 2, notes "Evaluation") -----


@dataclass(frozen=True)
class TraceStats:
    """Targets of one agentic trace (paper Table 2): per-trajectory turns, per-turn appended
    (uncached) and generated tokens, turn-weighted mean context, and the context cap."""

    name: str
    max_context: int
    turns: float
    append_tokens: float
    generated_tokens: float
    mean_context: float


TRACE_STATS: dict[str, TraceStats] = {
    s.name: s
    for s in (
        TraceStats("32k", 32 * 1024, 60, 608, 148, 17_183),
        TraceStats("48k", 48 * 1024, 106, 474, 172, 25_120),
        TraceStats("64k", 64 * 1024, 157, 429, 176, 32_721),
    )
}
# 500 trajectories per trace (paper §7).
TRAJECTORIES_PER_TRACE = 500
# Turns x (append + generated) exceeds the cap in every row of Table 2 (157 * 605 = 95K >
# 64K), and the mean context is ~half the cap: contexts grow, hit the cap and restart. We
# read that as the agent framework compacting its context (INFERRED): the next prompt is the
# system prompt (still cached) plus a fresh summary (not cached). Sizes ASSUMED.
SYSTEM_PROMPT_TOKENS = 1_536
COMPACTION_SUMMARY_TOKENS = (500, 2_500)
# First prompt of a trajectory: system prompt + task description (ASSUMED range).
INITIAL_TASK_TOKENS = (500, 4_000)
# Shape of the per-turn distributions (ASSUMED: tool outputs are heavy-tailed).
APPEND_LOGNORMAL_SIGMA = 1.0
GENERATED_LOGNORMAL_SIGMA = 0.7
# Turns per trajectory (ASSUMED): a narrow spread, clipped to [mean/3, 2.2 x mean]. An
# offline JCT is set by the longest trajectory played turn after turn, so a heavy tail here
# would make every policy's JCT the same serial chain; the paper's 2K-agent JCT (3,167 s at
# ~5-7 s per unloaded turn) bounds its longest trajectory to a few hundred turns.
TURNS_LOGNORMAL_SIGMA = 0.25
TURNS_CLIP = (1 / 3, 2.2)

# ----- SLOs for online serving (paper §7) -----
TTFT_SLO_S = 4.0
TPOT_SLO_S = 0.050
