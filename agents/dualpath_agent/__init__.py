"""DualPath node agent: KV block store, memory tiers and transfers between nodes.

Where to start: `service.py` (the gRPC Agent service and the read paths), `core.py` (the
agent's resources), `client.py` (driving agents), `launch.py` (starting them as processes).
Building blocks: `store.py` + `blockfile.py` (blocks on disk), `blockhash.py` (block ids),
`layout.py` (byte geometry), `buffer.py` (memory tiers), `transport.py` (NIXL and the
fallback), `snic.py` (storage NIC cap and read queue), `kvgen.py` (synthetic KV bytes),
`metrics.py`, `reporter.py` (load reports to the traffic controller), `cli.py`/`server.py`.
"""
