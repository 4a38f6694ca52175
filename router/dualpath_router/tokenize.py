"""A request's prompt as token ids: as the client sent them, or counted by an engine's
/tokenize (text prompts and chat messages, with the fields that change how chat is
templated). Engines that are up are asked first, prefill before decode; an engine that
fails is skipped, an engine's 4xx is the client's problem (passed on naming the field).
Shared by the router's proxy and the endpoint picker."""

from __future__ import annotations

import json
from typing import Any

import httpx

from dualpath_router import metrics as outcomes
from dualpath_router.config import EngineSpec
from dualpath_router.engines import EnginePool
from dualpath_router.errors import RouterError
from dualpath_router.metrics import RouterMetrics
from dualpath_router.openai_models import ValidRequest, token_ids

# Fields of a chat request that change how its messages are tokenized.
CHAT_TOKENIZE_FIELDS = (
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "chat_template",
    "chat_template_kwargs",
    "tools",
    "documents",
    "mm_processor_kwargs",
)


def excerpt(data: bytes, limit: int = 300) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def upstream_error_message(data: bytes) -> str:
    """The message of an engine's error JSON (vLLM's or OpenAI's shape), else an excerpt."""
    try:
        answer = json.loads(data)
    except ValueError:
        return excerpt(data)
    if isinstance(answer, dict):
        inner = answer.get("error", answer)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return excerpt(data)


def tokenize_payload(request: ValidRequest) -> dict[str, Any]:
    """The /tokenize body for a text or chat request."""
    payload: dict[str, Any] = {}
    if isinstance(request.body.get("model"), str):
        payload["model"] = request.body["model"]
    if request.messages is not None:
        payload["messages"] = list(request.messages)
        payload |= {k: request.body[k] for k in CHAT_TOKENIZE_FIELDS if k in request.body}
    else:
        payload["prompt"] = request.prompt_text
        if "add_special_tokens" in request.body:
            payload["add_special_tokens"] = request.body["add_special_tokens"]
    return payload


def tokenizers(pool: EnginePool) -> list[EngineSpec]:
    """Engines to tokenize on: those up first (prefill before decode), then the rest."""
    states = sorted(pool.states.values(), key=lambda s: (not s.up, s.spec.role != "prefill"))
    return [s.spec for s in states]


async def prompt_token_ids(
    request: ValidRequest,
    pool: EnginePool,
    metrics: RouterMetrics,
    max_prompt_tokens: int,
    headers: dict[str, str] | None = None,
) -> tuple[int, ...]:
    """The prompt's token ids; RouterError (4xx from an engine, 503 when none could)."""
    if request.prompt_token_ids is not None:
        return request.prompt_token_ids
    payload = tokenize_payload(request)
    problems = []
    for spec in tokenizers(pool):
        try:
            reply = await pool.http.post(f"{spec.url}/tokenize", json=payload, headers=headers)
        except httpx.HTTPError as exc:
            metrics.engine_errors.labels(spec.id, "unreachable").inc()
            problems.append(f"{spec.id}: {type(exc).__name__}: {exc}")
            continue
        if reply.status_code >= 500:
            metrics.engine_errors.labels(spec.id, "http_5xx").inc()
            problems.append(f"{spec.id}: HTTP {reply.status_code}: {excerpt(reply.content)}")
            continue
        if reply.status_code >= 400:
            raise RouterError(
                reply.status_code,
                f"{request.prompt_param}: engine {spec.id} could not tokenize it: "
                f"{upstream_error_message(reply.content)}",
                param=request.prompt_param,
                outcome=outcomes.ENGINE_REJECTED,
            )
        try:
            tokens = reply.json().get("tokens")
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, list):
            problems.append(f"{spec.id}: /tokenize answered without a token list")
            continue
        return token_ids(tokens, request.prompt_param, max_prompt_tokens)
    raise RouterError(
        503,
        "no engine could tokenize the prompt: " + ("; ".join(problems) or "no engine is up"),
        outcome=outcomes.ENGINE_ERROR,
    )
