"""`dualpath router`: an OpenAI-compatible HTTP front door for prefill/decode-disaggregated
vLLM engines whose KV cache is loaded through DualPath.

Per request it asks the traffic controller for a (prefill, decode, read path) assignment,
drives the prefill engine for the first token with the DualPath `kv_transfer_params`, then
the decode engine, streams the answer back and completes (or cancels) the request at the
controller. It registers the engines it fronts and reports their load from vLLM's metrics.

Modules, one concept each: `config` (engines and flags), `errors` (the OpenAI error
answer), `openai_models` (request validation), `rewrite` (prefill/decode bodies),
`vllm_metrics` (engine load from vLLM's /metrics), `engines` (HTTP pool, load polling and
reporting), `prefix` (cached-prefix lookup), `tokenize` (prompt token ids via an engine's
/tokenize), `proxy` (the per-request flow), `metrics`, `app` (HTTP routes and lifetimes),
`cli`, `process` (run it as a child process).

`picker/` is `dualpath picker`, the Gateway API Inference Extension endpoint picker (Envoy
ext_proc): the same decision, answered to a gateway as a destination instead of proxied.
"""
