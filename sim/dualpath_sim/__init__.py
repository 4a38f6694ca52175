"""DualPath cluster simulator: discrete-event model driven by the real policy core."""
