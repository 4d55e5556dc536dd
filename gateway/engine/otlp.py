"""OTLP's trace messages as protobuf bytes: the few shapes an export request needs.

Why not the OpenTelemetry SDK and its exporter: building a `ReadableSpan` and encoding it
through them took about 70 µs of CPU per span here, a quarter of what a whole 0-step
request costs the gateway. Encoding the few fields of our spans directly, with the
attributes that recur (a route, a status) encoded once, takes a fraction of that (see
bench/README). The output is OTLP's `ExportTraceServiceRequest`, which the tests decode
with opentelemetry-proto's generated classes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from gateway.config.model import TracingConfig
from gateway.engine.span_build import Span, Value

_DOUBLE: Final = struct.Struct("<d").pack
_FIXED64: Final = struct.Struct("<Q").pack
_FIXED32: Final = struct.Struct("<I").pack
_KINDS: Final = {"internal": 1, "server": 2, "client": 3}
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_SAMPLED: Final = 0x01


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE: Final = tuple(bytes((n,)) for n in range(256))


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field: `tag` is (field number << 3) | 2."""
    n = len(data)
    return _BYTE[tag] + (_BYTE[n] if n < 0x80 else _varint(n)) + data


def _value(value: Value) -> bytes:
    """An `AnyValue`."""
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    return b"\x21" + _DOUBLE(value)


def _pair(tag: int, key: str, value: Value) -> bytes:
    """One `KeyValue` field."""
    return _field(tag, _field(0x0A, key.encode()) + _field(0x12, _value(value)))


_PAIRS: dict[tuple[int, str, type, Value], bytes] = {}
"""Encoded attributes by (tag, key, type, value): most recur (an attempt number, a
status). The type tells True from 1 and 1.0, which are equal as keys."""
PAIRS_KEPT: Final = 4096
"""Then the cache starts again (one-off values, such as step ids, must not keep it full)."""


def _recurring(tag: int, key: str, value: Value) -> bytes:
    """`_pair`, from `_PAIRS` when it was seen lately."""
    cached = (tag, key, type(value), value)
    found = _PAIRS.get(cached)
    if found is None:
        if len(_PAIRS) >= PAIRS_KEPT:
            _PAIRS.clear()
        found = _PAIRS[cached] = _pair(tag, key, value)
    return found


def attributes(items: Iterable[tuple[str, Value]], tag: int = 0x4A) -> bytes:
    """Repeated `KeyValue` fields (a span's attributes are field 9)."""
    return b"".join([_pair(tag, key, value) for key, value in items])


def _span_attributes(items: Iterable[tuple[str, Value]], tag: int = 0x4A) -> bytes:
    return b"".join([_recurring(tag, key, value) for key, value in items])


def _nanos(seconds: float) -> bytes:
    return _FIXED64(int(seconds * 1e9))


_SPAN_KINDS: Final = {kind: bytes((0x30, number)) for kind, number in _KINDS.items()}


def encode_span(span: Span) -> bytes:
    """One `Span` message's fields."""
    flags = _SAMPLED | _HAS_IS_REMOTE
    parent = b""
    if span.parent_id is not None:
        parent = b"\x22\x08" + bytes.fromhex(span.parent_id)
        if span.remote_parent:
            flags |= _IS_REMOTE
    parts = [
        b"\x0a\x10" + bytes.fromhex(span.trace_id),
        b"\x12\x08" + bytes.fromhex(span.span_id),
        parent,
        _field(0x2A, span.name.encode()),
        _SPAN_KINDS[span.kind],
        b"\x39" + _nanos(span.start),
        b"\x41" + _nanos(span.end),
        _span_attributes(span.attributes.items()),
    ]
    for name, at, values in span.events:
        event = b"\x09" + _nanos(at) + _field(0x12, name.encode())
        parts.append(_field(0x5A, event + _span_attributes(values.items(), 0x1A)))
    if span.error is not None:  # Status: message, code ERROR
        parts.append(_field(0x7A, _field(0x12, span.error.encode()) + b"\x18\x02"))
    parts.append(b"\x85\x01" + _FIXED32(flags))  # field 16, fixed32
    return b"".join(parts)


def resource_head(config: TracingConfig) -> bytes:
    """A `ResourceSpans`' first field: the resource (`request_body` adds its spans)."""
    items: dict[str, Value] = dict(config.resource_attributes)
    items["service.name"] = config.service_name
    items.setdefault("service.version", _version())
    items["telemetry.sdk.name"] = "durable-gateway"
    items["telemetry.sdk.language"] = "python"
    return _field(0x0A, attributes(items.items(), 0x0A))


@functools.cache
def _scope() -> bytes:
    """The `InstrumentationScope` of every span: this gateway and its version."""
    return _field(0x0A, _field(0x0A, b"durable-gateway") + _field(0x12, _version().encode()))


def request_body(head: bytes, spans: Iterable[bytes]) -> bytes:
    """An `ExportTraceServiceRequest` of encoded spans, all of one resource and scope."""
    scope_spans = _scope() + b"".join([_field(0x12, span) for span in spans])
    return _field(0x0A, head + _field(0x12, scope_spans))


def _version() -> str:
    try:
        return version("durable-gateway")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0"
