"""The traffic controller's policy parameters, resolved from the spec (pure).

The controller's policy registry is the single source of truth for which parameters a
policy takes; the spec's seconds-based knobs become the token thresholds it wants.
"""

from __future__ import annotations

from dualpath_controller.policy.registry import describe_policies

from dualpath_operator.api import DualPathClusterSpec


def policy_parameters(policy: str) -> list[str]:
    return list(describe_policies().get(policy, {}))


def kv_bytes_per_token(spec: DualPathClusterSpec) -> int:
    from dualpath_common.models import get_model_preset

    model = spec.storage.model
    if model.preset is not None:
        return get_model_preset(model.preset).kv_bytes_per_token
    assert model.layers is not None and model.bytes_per_token_layer is not None
    return model.layers * model.bytes_per_token_layer


def resolved_policy_params(spec: DualPathClusterSpec) -> dict[str, str]:
    """NAME -> VALUE for `dualpath controller --policy-param`, only those the policy takes."""
    params = spec.traffic_controller.parameters
    snic_bytes_per_s = spec.storage.storage_nic_gbps * 1e9 / 8
    alpha = params.alpha_tokens
    if alpha is None:
        # The paper's definition: tokens one node's storage NIC reads in alpha seconds.
        alpha = int(snic_bytes_per_s * params.alpha_seconds / kv_bytes_per_token(spec))
    beta = params.beta_tokens
    if beta is None and params.prefill_tokens_per_second is not None:
        beta = int(params.prefill_tokens_per_second * params.beta_seconds)
    candidates: dict[str, object] = {
        "alpha": alpha,
        "beta": beta,
        "z": params.decode_balance_factor,
    }
    candidates.update(params.extra)
    accepted = set(policy_parameters(spec.traffic_controller.policy))
    return {k: str(v) for k, v in candidates.items() if k in accepted and v is not None}
