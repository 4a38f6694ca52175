"""DualPath node agent: KV block store, memory tiers and transfers between nodes."""
