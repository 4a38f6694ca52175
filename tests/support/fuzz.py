"""Bad input for the fuzz tests (tests/integration/test_fuzz_*.py): Hypothesis strategies
that build protobuf messages of any type from their descriptors with hostile field values,
raw wire bytes, the generic gRPC calls that send them, and the tally of cases run.

Why generic (descriptors, not hand-written per message): a field or an RPC added to the
.proto files is fuzzed without touching the tests.

Property checked by the callers: every call ends within its deadline with OK or a clean
status from CLEAN_CODES. UNKNOWN and INTERNAL mean an unhandled exception in the server
(or in gRPC's own deserialization, which logs a traceback per bad message).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Descriptors are typed loosely: protobuf's stubs and its upb classes disagree.
Descriptor = Any
MethodDescriptor = Any

# Statuses a server may answer bad input with. DEADLINE_EXCEEDED and UNKNOWN/INTERNAL are
# failures of the property (a hang, an unhandled exception).
CLEAN_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Where a peer agent is involved (DE_READ, Commit -> Merge), its absence is UNAVAILABLE.
PEER_CODES = CLEAN_CODES | {grpc.StatusCode.UNAVAILABLE}

# Loopback-only values for fields a server connects to: fuzz traffic never leaves this
# machine (a random string would be resolved as a host name).
CLOSED_PORT_ENDPOINTS = ("127.0.0.1:1", "127.0.0.1:9", "[::1]:1", "localhost:1")
BAD_ENDPOINTS = ("", ":", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1", "[::1")

# --- the tally of cases run ---------------------------------------------------------------


@dataclass
class Tally:
    """Cases sent per (target, method), and the status each got."""

    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, target: str, method: str, outcome: str, n: int = 1) -> None:
        with self._lock:
            self.outcomes[(target, method, outcome)] += n

    def total(self, target: str | None = None) -> int:
        return sum(n for (t, _, _), n in self.outcomes.items() if target in (None, t))

    def by_target(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (t, _, _), n in self.outcomes.items():
            out[t] += n
        return dict(out)

    def lines(self) -> list[str]:
        """One line per target: its cases and their outcomes (for the terminal summary)."""
        out = []
        for target, total in sorted(self.by_target().items()):
            codes: Counter[str] = Counter()
            for (t, _, outcome), n in self.outcomes.items():
                if t == target:
                    codes[outcome] += n
            detail = ", ".join(f"{c} {n}" for c, n in codes.most_common())
            out.append(f"fuzz {target}: {total} cases ({detail})")
        return out


TALLY = Tally()

# --- scalars --------------------------------------------------------------------------------

INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def nasty_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """The range's edges and the values next to them, plus anything in between."""
    candidates = (lo, lo + 1, -1, 0, 1, 2, 63, 64, 65, 1024, 2**31 - 1, 2**31, 2**32 - 1)
    edges = sorted({v for v in (*candidates, 2**32, 2**53 + 1, hi - 1, hi) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def nasty_floats() -> st.SearchStrategy[float]:
    specials = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1.0, 1.5)
    return st.one_of(st.sampled_from(specials), st.floats(allow_nan=True, allow_infinity=True))


def nasty_text() -> st.SearchStrategy[str]:
    """Empty, control characters, non-ASCII, and long strings (over every id limit)."""
    return st.one_of(
        st.sampled_from(("", " ", "\x00", "a\nb", "../../etc/passwd", "é", "\u202e", "🙂")),
        st.text(max_size=40),
        st.builds(
            lambda c, n: c * n, st.sampled_from("xé\x00"), st.sampled_from((257, 5000, 70_000))
        ),
    )


def nasty_bytes() -> st.SearchStrategy[bytes]:
    """Wrong-length hashes (the API's hashes are 16 bytes), empty, random, long."""
    return st.one_of(
        st.binary(min_size=16, max_size=16),
        st.sampled_from((b"", b"\x00" * 16, b"\xff" * 16, b"short", b"\x00" * 17, b"x" * 70_000)),
        st.binary(max_size=40),
    )


def scalar_strategy(fd: Any) -> st.SearchStrategy[Any]:
    cpp = fd.cpp_type
    if cpp in INT_RANGES:
        return nasty_ints(*INT_RANGES[cpp])
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return nasty_floats()
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        # proto3 enums are open: out-of-range numbers travel as they are.
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), nasty_ints(-(2**31), 2**31 - 1))
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return nasty_bytes()
    return nasty_text()


# --- messages -------------------------------------------------------------------------------

Overrides = Mapping[str, st.SearchStrategy[Any]]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A few elements, or very many copies of one (over per-message limits such as the
    Session batch limit of 1024)."""
    return st.one_of(
        st.lists(element, max_size=4),
        st.builds(lambda v, n: [v] * n, element, st.sampled_from((1025, 3000))),
    )


def field_strategies(
    descriptor: Descriptor, overrides: Overrides | None = None, depth: int = 0
) -> dict[str, st.SearchStrategy[Any]]:
    """Per field name, the strategy of its value (a list for repeated fields, a dict for
    maps). `overrides` replaces the value strategy of fields by name (elements for repeated
    fields), at any depth."""
    overrides = overrides or {}
    out: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if _is_map(fd):
            key, val = (fd.message_type.fields_by_name[n] for n in ("key", "value"))
            out[fd.name] = st.dictionaries(scalar_strategy(key), scalar_strategy(val), max_size=3)
            continue
        if fd.name in overrides:
            value = overrides[fd.name]
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            value = st.deferred(
                lambda fd=fd: messages(fd.message_type, overrides, depth + 1)  # type: ignore[misc]
            )
        else:
            value = scalar_strategy(fd)
        out[fd.name] = _repeated(value) if _is_repeated(fd) else value
    return out


def messages(
    descriptor: Descriptor, overrides: Overrides | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of this type with any subset of fields set to hostile values."""
    cls = message_class(descriptor)
    if depth > 3:
        return st.just(cls())
    optional = field_strategies(descriptor, overrides, depth)
    return st.fixed_dictionaries({}, optional=optional).map(lambda d: build(cls(), d))


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def _is_map(fd: Any) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def build(msg: Message, values: Mapping[str, Any]) -> Message:
    """Set these field values on msg (replacing what it held) and return it."""
    for name, value in values.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        msg.ClearField(name)
        target = getattr(msg, name)
        if _is_map(fd):
            target.update(value)
        elif _is_repeated(fd):
            target.extend(value)
        elif fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def mutations(base: Message, overrides: Overrides | None = None) -> st.SearchStrategy[Message]:
    """A valid message with one or two of its top-level fields replaced by hostile values:
    gets past the first checks, into the code behind them."""
    per_field = field_strategies(base.DESCRIPTOR, overrides)
    names = sorted(per_field)

    def copy_with(values: dict[str, Any]) -> Message:
        out = type(base)()
        out.CopyFrom(base)
        return build(out, values)

    pick = st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)
    return pick.flatmap(
        lambda chosen: st.fixed_dictionaries({n: per_field[n] for n in chosen})
    ).map(copy_with)


def all_message_types(*modules: Any) -> list[Descriptor]:
    """Every top-level message type of the given _pb2 modules."""
    out: list[Descriptor] = []
    for module in modules:
        out.extend(module.DESCRIPTOR.message_types_by_name.values())
    return sorted(out, key=lambda d: d.full_name)


def wrong_type_payloads(
    method: MethodDescriptor, types: Iterable[Descriptor]
) -> st.SearchStrategy[bytes]:
    """A message of another type than the method takes, serialized."""
    others = [d for d in types if d.full_name != method.input_type.full_name]
    return (
        st.sampled_from(others).flatmap(lambda d: messages(d)).map(lambda m: m.SerializeToString())
    )


# --- raw wire bytes -------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def nested_bomb(depth: int) -> bytes:
    """Field 1 as a length-delimited value `depth` times nested: a message nested past
    protobuf's recursion limit where field 1 is a message, a string otherwise."""
    inner = b""
    for _ in range(depth):
        inner = b"\x0a" + varint(len(inner)) + inner
    return inner


def raw_payloads() -> st.SearchStrategy[bytes]:
    """Bytes that are mostly not a valid message: random, truncated, a length prefix far
    beyond the data, an invalid wire type, a nesting bomb, a huge varint."""
    crafted = (
        b"\xff",
        b"\x0a\x80\x80\x80\x80\x10",  # field 1, length 4 GiB, no data
        b"\x0a\x05ab",  # truncated
        b"\x0f",  # wire type 7 does not exist
        b"\x08" + b"\xff" * 11,  # varint longer than 10 bytes
        b"\x00",  # field number 0
        b"\x0b\x0c",  # start group / end group (deprecated wire types)
        nested_bomb(120),
        nested_bomb(1000),
    )
    return st.one_of(st.sampled_from(crafted), st.binary(max_size=300))


def parses_as(cls: type[Message], payload: bytes) -> bool:
    try:
        cls.FromString(payload)
    except (DecodeError, RuntimeError, ValueError):
        return False
    return True


# --- generic calls -------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    # Serialized responses (one for unary, each message of a stream).
    replies: list[bytes]


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call_raw(
    channel: grpc.Channel,
    method: MethodDescriptor,
    payloads: list[bytes],
    timeout_s: float,
    max_replies: int = 50,
) -> Outcome:
    """Send serialized request(s) to a method of any kind (the first payload for a unary
    request, all of them on a request stream) with identity serializers; read at most
    `max_replies` replies of a response stream, then hang up (a stream that goes on for
    ever, WatchStatus, is thus fine)."""
    path = method_path(method)
    replies: list[bytes] = []
    try:
        if not method.client_streaming and not method.server_streaming:
            replies.append(channel.unary_unary(path, None, None)(payloads[0], timeout=timeout_s))
        elif not method.client_streaming:
            stream = channel.unary_stream(path, None, None)(payloads[0], timeout=timeout_s)
            _read(stream, replies, max_replies)
        elif not method.server_streaming:
            replies.append(
                channel.stream_unary(path, None, None)(iter(payloads), timeout=timeout_s)
            )
        else:
            stream = channel.stream_stream(path, None, None)(iter(payloads), timeout=timeout_s)
            _read(stream, replies, max_replies)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", replies)  # type: ignore[attr-defined]
    return Outcome(grpc.StatusCode.OK, "", replies)


def _read(stream: Any, replies: list[bytes], limit: int) -> None:
    for reply in itertools.islice(stream, limit):
        replies.append(reply)
    if len(replies) >= limit:
        stream.cancel()


def check_outcome(
    target: str,
    method: MethodDescriptor,
    outcome: Outcome,
    allowed: frozenset[grpc.StatusCode] = CLEAN_CODES,
    kind: str = "",
) -> None:
    """Count the case and assert the property: a clean status, replies that parse."""
    TALLY.add(target, method.name, outcome.code.name)
    assert outcome.code in allowed, (
        f"{method.name}{' (' + kind + ')' if kind else ''} answered {outcome.code.name}: "
        f"{outcome.details[:500]}"
    )
    out_cls = message_class(method.output_type)
    for reply in outcome.replies:
        out_cls.FromString(reply)


def fuzz_settings(examples: int) -> settings:
    """Reproducible in CI (derandomized, no example database), no per-example deadline
    (a real process answers), and the processes are module fixtures reused by every case."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def payloads_for(
    method: MethodDescriptor, one: st.SearchStrategy[bytes]
) -> st.SearchStrategy[list[bytes]]:
    """One payload for a unary request, one to four on a request stream."""
    if method.client_streaming:
        return st.lists(one, min_size=1, max_size=4)
    return st.lists(one, min_size=1, max_size=1)


def serialized(strategy: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda m: m.SerializeToString())
