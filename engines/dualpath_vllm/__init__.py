"""vLLM engines for DualPath: a KV connector that loads cached KV through the node agents,
plus what tests, the demo and benchmarks need to run real engines on this machine (a tiny
local model, engine processes, reference comparisons).

vLLM and torch live only in the engines' venv (`make engines-venv`); the modules that the
control plane imports (`process`, `reference`) need neither, and the others import them
lazily. Keep this file free of imports: vLLM loads the connector by module path.
"""
