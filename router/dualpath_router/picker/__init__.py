"""`dualpath picker`: the Gateway API Inference Extension endpoint picker (EPP) for DualPath.

A gateway (Envoy) asks the picker, over Envoy's ext_proc protocol, which model server serves
each HTTP request. The picker answers like `dualpath router` decides (prompt tokens, cached
prefix from an agent Lookup, Schedule at the traffic controller), names the picked PREFILL
engine as the destination, which serves the whole request (prefill and decode: ext_proc has
one destination), and rewrites the body so the engine's connector loads the cached prefix by
the controller's read path (`kv_transfer_params.dualpath`, role "whole").

Modules: `protocol.py` (the EPP protocol's names and ext_proc messages, pure),
`endpoints.py` (ip:port <-> engines), `decision.py` (body + candidates -> Schedule ->
destination and body), `extproc.py` (the ext_proc servicer, one typed state per stream),
`health.py` (gRPC health and readiness), `metrics.py`, `server.py`, `cli.py`, `process.py`.
"""
