"""Pieces every DualPath component shares: structured logs, metrics + health endpoint,
model presets. Nothing here does I/O at import time."""
