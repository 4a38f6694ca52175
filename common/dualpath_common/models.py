"""Model presets: the KV-cache geometry every component needs to turn tokens into bytes.

One place for these numbers (operator CRD presets, agents' block layout, simulator,
demo). Sources: ../shared/notes/dualpath-paper.md, "Numbers for a simulator"; values
marked inferred there are inferred here too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelPreset:
    name: str
    layers: int
    # KV bytes one token occupies in one layer (K and V together, all KV heads).
    bytes_per_token_layer: int
    source: str

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.bytes_per_token_layer

    def block_bytes(self, block_tokens: int) -> int:
        """Size of one Full Block = [layers, tokens, bytes_per_token_layer]."""
        return self.layers * block_tokens * self.bytes_per_token_layer


MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "deepseek-v3.2-660b",
            layers=61,
            bytes_per_token_layer=656,
            source="paper notes: ~656 B/token/layer x 61 layers ~ 40 KB/token (inferred, MLA)",
        ),
        ModelPreset(
            "ds-27b",
            layers=30,
            bytes_per_token_layer=682,
            source="paper notes: ~20 KB/token (inferred; 30 layers assumed)",
        ),
        ModelPreset(
            "qwen2.5-32b",
            layers=64,
            bytes_per_token_layer=4096,
            source="paper notes: 64 layers x 8 KV heads x 128 dims x 2 (K,V) x 2 B = 256 KiB",
        ),
        ModelPreset(
            "tiny-test",
            layers=4,
            bytes_per_token_layer=1024,
            source="ours: small geometry for tests and the local demo",
        ),
    )
}


def get_model_preset(name: str) -> ModelPreset:
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_PRESETS))
        raise ValueError(f"unknown model preset {name!r} (known: {known})") from None
