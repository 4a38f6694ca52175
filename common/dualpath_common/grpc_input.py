"""Request bytes that do not parse as the method's message become INVALID_ARGUMENT.

Without this, gRPC Python answers a corrupt request with UNKNOWN (grpc.aio) or INTERNAL
(the threaded server) and logs an ERROR with a traceback for every such message: a client
bug or a stray scanner looks like a server fault and can flood the error logs (found by
tests/integration/test_fuzz_*.py). The method handlers are wrapped once, when the servicer
is added (no per-call interceptor): the request deserializer returns a `CorruptRequest`
marker instead of raising, and the wrapped behaviour refuses the marker before the servicer
sees it. For request streams the servicer reads on: the threaded server's iterator raises
`CorruptRequestError` (a ValueError, which servicers map to INVALID_ARGUMENT), the
grpc.aio iterator and `context.read()` abort the call with INVALID_ARGUMENT.

Usage: `add_servicer(pb_grpc.add_FooServicer_to_server, servicer, server)` instead of
`pb_grpc.add_FooServicer_to_server(servicer, server)`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class CorruptRequest:
    """What the tolerant deserializer returns for bytes that do not parse."""

    method: str
    error: str

    @property
    def message(self) -> str:
        return f"{self.method}: the request is not a valid protobuf message: {self.error}"


class CorruptRequestError(ValueError):
    """Raised by a threaded server's request iterator at a corrupt message."""


def _tolerant(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, RuntimeError (recursion limit), ...
            return CorruptRequest(method, f"{type(exc).__name__}: {exc}")

    return parse


# ----- threaded server (grpc.server) ---------------------------------------------------------


def _sync_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(behavior)
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, CorruptRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behavior(request, context)

    return wrapped


def _sync_checked(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, CorruptRequest):
            raise CorruptRequestError(request.message)
        yield request


def _sync_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(behavior)
    def wrapped(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behavior(_sync_checked(requests), context)

    return wrapped


# ----- grpc.aio server ---------------------------------------------------------------------


class _CheckedContext:
    """An aio servicer context whose read() refuses a corrupt message (everything else is
    the real context's)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        request = await self._context.read()
        if isinstance(request, CorruptRequest):
            await self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request


async def _aio_checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, CorruptRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def _aio_wrap(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
    """The same kind of callable as `behavior` (grpc.aio dispatches on it: coroutine
    function or async generator function)."""

    async def checked(request: Any, context: Any) -> tuple[Any, Any]:
        if request_streaming:
            return _aio_checked(request, context), _CheckedContext(context)
        if isinstance(request, CorruptRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request, context

    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            request, inner = await checked(request, context)
            async for reply in behavior(request, inner):
                yield reply

        return stream

    @functools.wraps(behavior)
    async def call(request: Any, context: Any) -> Any:
        request, inner = await checked(request, context)
        return await behavior(request, inner)

    return call


# ----- registration --------------------------------------------------------------------------


def _wrap_handler(name: str, handler: grpc.RpcMethodHandler, aio: bool) -> grpc.RpcMethodHandler:
    if handler.request_deserializer is None:
        return handler
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behavior = getattr(handler, kind)
    if aio:
        wrapped = _aio_wrap(behavior, handler.request_streaming)
    else:
        wrapped = (_sync_stream if handler.request_streaming else _sync_unary)(behavior)
    return handler._replace(  # type: ignore[attr-defined, no-any-return]
        request_deserializer=_tolerant(name, handler.request_deserializer), **{kind: wrapped}
    )


class _Registrar:
    """Stands for the server while generated code adds a servicer: wraps its handlers."""

    def __init__(self, server: Any, aio: bool) -> None:
        self._server = server
        self._aio = aio
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Built again from the wrapped handlers in add_registered_method_handlers."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {
            name: _wrap_handler(f"{service}/{name}", h, self._aio) for name, h in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self._server.add_registered_method_handlers(service, wrapped)
        self.services.append(service)


def add_servicer(add: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """Add `servicer` to `server` (grpc.server or grpc.aio.server) with the generated
    `add_*Servicer_to_server` function, corrupt requests refused as INVALID_ARGUMENT."""
    aio = isinstance(server, grpc.aio.Server)
    registrar = _Registrar(server, aio)
    add(servicer, registrar)
    if not registrar.services:  # generated code older than add_registered_method_handlers
        raise RuntimeError(f"{add.__name__} registered no method handlers")
