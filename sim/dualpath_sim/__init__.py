"""DualPath cluster simulator: discrete-event model driven by the real policy core.

`dualpath sim --preset paper-ds660b-2p4d-64k` runs the paper's 2P4D point for every policy;
`dualpath_sim.core.simulate(SimConfig(...))` runs one configuration. Assumed numbers live in
`constants.py` with their sources; see `core.py` for the request life cycle.
"""
