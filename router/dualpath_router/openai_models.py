"""Validation of the OpenAI request bodies the router accepts (pure functions).

Only what the router itself uses or must be able to trust is checked (the prompt, the
messages, stream, the output limits and a few sampling types); every other field is kept
as the client sent it and passed through to vLLM untouched. `prompt` may be a string, a
list of token ids, or a list holding exactly one of those. Errors are RouterError(400)
whose message and `param` name the field, e.g. `prompt[3]: token id must be ...`.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from dualpath_router.errors import RouterError, bad_request
from dualpath_router.tenancy import check_cache_salt

# Block hashes pack token ids as little-endian uint32.
MAX_TOKEN_ID = 2**32 - 1
# A \uD800-\uDFFF escape: the only way UTF-8 JSON yields a lone surrogate, which json.loads
# accepts and no encoder takes (found by fuzzing: the engine call failed, a 500).
SURROGATE_ESCAPE = re.compile(rb"\\u[d][89a-f]", re.IGNORECASE)

StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]  # ints are accepted, strings and bools are not
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]
# Output limits travel to the controller as a uint64 (Schedule.expected_output_tokens): a
# larger one made building the message fail (found by fuzzing: a 500). The controller
# refuses values that fit but are absurd, which the client gets as a 400 too.
OutputLimit = Annotated[StrictInt, Field(ge=1, le=2**64 - 1)]


class Endpoint(enum.Enum):
    COMPLETIONS = "/v1/completions"
    CHAT = "/v1/chat/completions"

    @property
    def label(self) -> str:
        return "completions" if self is Endpoint.COMPLETIONS else "chat"


class _Common(BaseModel):
    """Fields both endpoints share. Unknown fields are allowed (and passed through)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: OutputLimit | None = None
    temperature: Annotated[StrictFloat, Field(ge=0)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1)] | None = None


class CompletionBody(_Common):
    prompt: Any = None


class ChatBody(_Common):
    messages: Any = None
    max_completion_tokens: OutputLimit | None = None


@dataclass(frozen=True)
class ValidRequest:
    """A validated request: what the router needs from it, and the body to forward."""

    endpoint: Endpoint
    # The client's JSON object, as sent (forwarded with only the router's changes).
    body: dict[str, Any]
    stream: bool
    # max_completion_tokens or max_tokens; None when the client gave no limit.
    max_output_tokens: int | None
    # Exactly one of: the prompt's token ids, its text, or the chat messages.
    prompt_token_ids: tuple[int, ...] | None = None
    prompt_text: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    # vLLM's `cache_salt` as the client sent it (checked; tenancy.py): the KV store's hash
    # chain is rooted at it, so only requests with the same salt share cached blocks.
    cache_salt: str | None = None

    @property
    def prompt_param(self) -> str:
        return "messages" if self.endpoint is Endpoint.CHAT else "prompt"


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or RouterError(400) saying what is wrong and where."""

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(raw, parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. [[[[...]]]] nested ~100,000 deep (found by fuzzing: a 500)
        raise bad_request("request body is nested too deeply") from None
    if SURROGATE_ESCAPE.search(raw):  # a pair is fine: json.loads joins it into one character
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise bad_request(
                "request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string"
            ) from None
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, got {type(data).__name__}")
    return data


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _from_validation_error(exc: ValidationError) -> RouterError:
    errors = exc.errors()
    parts = [f"{_field_name(e['loc'])}: {e['msg']}" for e in errors]
    return RouterError(400, "; ".join(parts), param=_field_name(errors[0]["loc"]) or None)


def token_ids(value: list[Any], field: str, max_tokens: int) -> tuple[int, ...]:
    """A list of token ids, each an integer in [0, 2^32 - 1], at most max_tokens of them."""
    if not value:
        raise bad_request("must not be empty", field)
    if len(value) > max_tokens:
        raise bad_request(
            f"{len(value)} tokens is more than this router's limit of {max_tokens}", field
        )
    for i, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok <= MAX_TOKEN_ID:
            raise bad_request(
                f"token id must be an integer in [0, {MAX_TOKEN_ID}], got {tok!r}", f"{field}[{i}]"
            )
    return tuple(value)


def _prompt(value: Any, max_tokens: int) -> tuple[tuple[int, ...] | None, str | None]:
    """(token ids, None) or (None, text) from `prompt`."""
    field = "prompt"
    if value is None:
        raise bad_request("is required", field)
    if isinstance(value, list) and value and isinstance(value[0], (str, list)):
        if len(value) != 1:
            raise bad_request(
                f"a batch of {len(value)} prompts is not supported: send one prompt per request",
                field,
            )
        value, field = value[0], "prompt[0]"
    if isinstance(value, str):
        if not value:
            raise bad_request("must not be empty", field)
        return None, value
    if isinstance(value, list):
        return token_ids(value, field, max_tokens), None
    raise bad_request(
        f"must be a string, a list of token ids, or a list with one of those;"
        f" got {type(value).__name__}",
        field,
    )


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        raise bad_request("is required", "messages")
    if not isinstance(value, list) or not value:
        raise bad_request("must be a non-empty list of message objects", "messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise bad_request(f"must be an object, got {type(message).__name__}", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request("is required (a non-empty string)", f"messages[{i}].role")
    return tuple(value)


def validate_request(endpoint: Endpoint, raw: bytes, max_prompt_tokens: int) -> ValidRequest:
    """Parse and check one request body; RouterError(400) naming the field otherwise."""
    data = parse_json_object(raw)
    if "kv_transfer_params" in data:
        raise bad_request(
            "is set by the router for its prefill and decode engines; clients must not send it",
            "kv_transfer_params",
        )
    model: type[CompletionBody | ChatBody] = (
        ChatBody if endpoint is Endpoint.CHAT else CompletionBody
    )
    try:
        fields = model.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc) from None
    stream = bool(fields.stream)
    cache_salt = check_cache_salt(data.get("cache_salt"))
    if fields.stream_options is not None and not stream:
        raise bad_request("is only allowed with stream: true", "stream_options")
    if isinstance(fields, ChatBody):
        return ValidRequest(
            endpoint,
            data,
            stream,
            fields.max_completion_tokens or fields.max_tokens,
            messages=_messages(fields.messages),
            cache_salt=cache_salt,
        )
    ids, text = _prompt(fields.prompt, max_prompt_tokens)
    return ValidRequest(
        endpoint,
        data,
        stream,
        fields.max_tokens,
        prompt_token_ids=ids,
        prompt_text=text,
        cache_salt=cache_salt,
    )
