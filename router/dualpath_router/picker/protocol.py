"""The endpoint picker protocol of the Gateway API Inference Extension, and the ext_proc
messages that carry it (pure functions).

Source: kubernetes-sigs/gateway-api-inference-extension,
docs/proposals/004-endpoint-picker-protocol/README.md (v1.0.0):

- The EPP implements Envoy's external processing service
  (envoy.service.ext_proc.v3.ExternalProcessor/Process, one bidi stream per HTTP request).
- Endpoint subset [data plane -> EPP]: the proxy CAN send, in the ext_proc request's
  `metadata_context.filter_metadata`, namespace `envoy.lb.subset_hint`, key
  `x-gateway-destination-endpoint-subset`: a list of "<ip:port>". If the key is set the EPP
  MUST pick only from it; if none is eligible or the list is empty it MUST answer an
  ImmediateResponse with 503. Without the key it picks from the whole pool.
- Destination [EPP -> data plane]: the EPP MUST set the HTTP header
  `x-gateway-destination-endpoint` AND an entry of the ext_proc response's
  `dynamic_metadata`, namespace `envoy.lb`, key `x-gateway-destination-endpoint`, to the
  same "<ip:port>" (the two MUST NOT differ).
- No destination: ImmediateResponse 503 when there are no ready endpoints, 429 when the
  request should be dropped because the servers are under heavy load.
- Served endpoint [data plane -> EPP]: on the response, `metadata_context.filter_metadata`
  namespace `envoy.lb` key `x-gateway-destination-endpoint-served` (logged here).
- Health: gRPC health checking with services `liveness`, `readiness` and
  `envoy.service.ext_proc.v3.ExternalProcessor` (health.py).

How the body reaches the picker: with Envoy's `request_body_mode: BUFFERED` the whole body
comes in one `request_body` and the answer to it carries the header mutation, the new body
and the dynamic metadata; with `FULL_DUPLEX_STREAMED` (what the reference EPP runs) the
chunks are collected and the picker answers, at the last one, a `request_headers` response
(header mutation) then one `request_body` response with the whole new body as a streamed
response. A filter configured with neither is asked for BUFFERED through `mode_override`
(it needs `allow_mode_override: true`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2 as core
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as modes
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from envoy.type.v3 import http_status_pb2 as http_status
from google.protobuf import struct_pb2

DESTINATION_HEADER = "x-gateway-destination-endpoint"
DESTINATION_NAMESPACE = "envoy.lb"
DESTINATION_KEY = "x-gateway-destination-endpoint"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
EXTPROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"

BUFFERED = modes.ProcessingMode.BUFFERED
FULL_DUPLEX = modes.ProcessingMode.FULL_DUPLEX_STREAMED
NO_BODY = modes.ProcessingMode.NONE


class ProtocolError(ValueError):
    """The data plane sent something the protocol does not allow (answered 400)."""


@dataclass(frozen=True)
class Destination:
    """What the picker tells the data plane for one request."""

    endpoint: str  # "<ip:port>"
    body: bytes | None  # the new request body (None: leave the body alone)
    # Extra request headers (ours: which engine, why), set with the destination header.
    headers: tuple[tuple[str, str], ...] = ()


def subset_hint(request: ext.ProcessingRequest) -> tuple[str, ...] | None:
    """The subset the proxy allows, or None when it sent no subset key (any endpoint)."""
    namespace = request.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
    if namespace is None or SUBSET_KEY not in namespace.fields:
        return None
    value = namespace.fields[SUBSET_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        items = value.list_value.values
        if not all(v.WhichOneof("kind") == "string_value" for v in items):
            raise ProtocolError(f"{SUBSET_NAMESPACE}.{SUBSET_KEY} must list strings (ip:port)")
        return tuple(v.string_value for v in items)
    if kind == "string_value":  # lenient: one endpoint, or a comma-separated list
        return tuple(p.strip() for p in value.string_value.split(",") if p.strip())
    raise ProtocolError(f"{SUBSET_NAMESPACE}.{SUBSET_KEY} must be a list of ip:port strings")


def served_endpoint(request: ext.ProcessingRequest) -> str:
    """The endpoint the data plane says served the request ("" when not sent)."""
    namespace = request.metadata_context.filter_metadata.get(DESTINATION_NAMESPACE)
    if namespace is None or SERVED_KEY not in namespace.fields:
        return ""
    return str(namespace.fields[SERVED_KEY].string_value)


def header_value(headers: ext.HttpHeaders, name: str) -> str:
    """One request header (names are lower case in HTTP/2 and in Envoy's map)."""
    for header in headers.headers.headers:
        if header.key.lower() == name:
            return header.raw_value.decode(errors="replace") if header.raw_value else header.value
    return ""


def all_headers(headers: ext.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers.headers.headers:
        out[header.key.lower()] = (
            header.raw_value.decode(errors="replace") if header.raw_value else header.value
        )
    return out


def destination_metadata(endpoint: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(DESTINATION_NAMESPACE)[DESTINATION_KEY] = endpoint
    return metadata


def _header_mutation(destination: Destination, body_length: int | None) -> ext.HeaderMutation:
    headers = [(DESTINATION_HEADER, destination.endpoint), *destination.headers]
    if body_length is not None:  # the body was replaced: its length changed
        headers.append(("content-length", str(body_length)))
    return ext.HeaderMutation(
        set_headers=[
            core.HeaderValueOption(
                header=core.HeaderValue(key=key, raw_value=value.encode()),
                append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
            for key, value in headers
        ]
    )


def continue_headers(ask_for_body: bool) -> ext.ProcessingResponse:
    """CONTINUE after the request headers; `ask_for_body`: switch this request's body to
    BUFFERED (the filter must allow mode overrides)."""
    response = ext.ProcessingResponse(request_headers=ext.HeadersResponse())
    if ask_for_body:
        response.mode_override.request_body_mode = BUFFERED
    return response


def buffered_destination(destination: Destination) -> ext.ProcessingResponse:
    """The answer to a BUFFERED request body: headers, the new body, the metadata."""
    common = ext.CommonResponse(
        header_mutation=_header_mutation(
            destination, len(destination.body) if destination.body is not None else None
        ),
        clear_route_cache=True,
    )
    if destination.body is not None:
        common.body_mutation.body = destination.body
    return ext.ProcessingResponse(
        request_body=ext.BodyResponse(response=common),
        dynamic_metadata=destination_metadata(destination.endpoint),
    )


def headers_destination(destination: Destination) -> ext.ProcessingResponse:
    """The answer to the request headers that carries the destination (full-duplex mode,
    sent once the body is in; or a request without a body)."""
    return ext.ProcessingResponse(
        request_headers=ext.HeadersResponse(
            response=ext.CommonResponse(
                header_mutation=_header_mutation(
                    destination, len(destination.body) if destination.body is not None else None
                ),
                clear_route_cache=True,
            )
        ),
        dynamic_metadata=destination_metadata(destination.endpoint),
    )


def streamed_body(body: bytes) -> ext.ProcessingResponse:
    """The whole new request body in full-duplex mode (one streamed response, the last)."""
    common = ext.CommonResponse()
    common.body_mutation.streamed_response.body = body
    common.body_mutation.streamed_response.end_of_stream = True
    return ext.ProcessingResponse(request_body=ext.BodyResponse(response=common))


def continue_response_headers() -> ext.ProcessingResponse:
    return ext.ProcessingResponse(response_headers=ext.HeadersResponse())


def continue_response_body(chunk: ext.HttpBody, full_duplex: bool) -> ext.ProcessingResponse:
    """Pass a response chunk on unchanged (in full-duplex mode it must be sent back)."""
    if not full_duplex:
        return ext.ProcessingResponse(response_body=ext.BodyResponse())
    common = ext.CommonResponse()
    common.body_mutation.streamed_response.body = chunk.body
    common.body_mutation.streamed_response.end_of_stream = chunk.end_of_stream
    return ext.ProcessingResponse(response_body=ext.BodyResponse(response=common))


def continue_trailers(request_side: bool) -> ext.ProcessingResponse:
    if request_side:
        return ext.ProcessingResponse(request_trailers=ext.TrailersResponse())
    return ext.ProcessingResponse(response_trailers=ext.TrailersResponse())


def immediate(
    status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> ext.ProcessingResponse:
    """An ImmediateResponse: the data plane answers the client with it, nothing upstream."""
    return ext.ProcessingResponse(
        immediate_response=ext.ImmediateResponse(
            status=http_status.HttpStatus(code=status),  # type: ignore[arg-type]
            body=body,
            headers=ext.HeaderMutation(
                set_headers=[
                    core.HeaderValueOption(
                        header=core.HeaderValue(key=key, raw_value=value.encode())
                    )
                    for key, value in (("content-type", "application/json"), *headers)
                ]
            ),
            details=f"dualpath_picker_{status}",
        )
    )


def subset_struct(endpoints: Sequence[str]) -> struct_pb2.Struct:
    """The data plane's side (tests, tools): a subset hint as filter metadata."""
    hint = struct_pb2.Struct()
    hint.get_or_create_list(SUBSET_KEY).extend(list(endpoints))
    return hint
