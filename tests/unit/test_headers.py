"""Header rewriting: hop-by-hop stripping, X-Forwarded-*, gateway headers, traceparent."""

from __future__ import annotations

import random
import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.headers import (
    HOP_BY_HOP,
    client_response_headers,
    strip_hop_by_hop,
    traceparent_for,
    upstream_request_headers,
)
from step_protocol.wire import GATEWAY_HEADERS

TP = "traceparent-from-gateway"

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def proxy(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_set() -> None:
    assert HOP_BY_HOP == {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ([("Accept", "*/*")], [("Accept", "*/*")]),
        (
            [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("Accept", "a")],
            [("Accept", "a")],
        ),
        ([("Transfer-Encoding", "chunked"), ("TE", "trailers"), ("Upgrade", "h2c")], []),
        ([("Proxy-Authorization", "Basic x"), ("Proxy-Connection", "close")], []),
        # headers named by Connection are hop-by-hop too, case-insensitively
        (
            [("Connection", "close, X-Secret , x-other"), ("X-SECRET", "1"), ("X-Other", "2")],
            [],
        ),
        # several Connection headers all count
        (
            [
                ("Connection", "x-a"),
                ("connection", "X-B"),
                ("X-A", "1"),
                ("X-B", "2"),
                ("X-C", "3"),
            ],
            [("X-C", "3")],
        ),
        # repeated end-to-end headers keep their order and case
        (
            [("Set-Cookie", "a=1"), ("set-cookie", "b=2")],
            [("Set-Cookie", "a=1"), ("set-cookie", "b=2")],
        ),
    ],
)
def test_strip_hop_by_hop(given: list[tuple[str, str]], kept: list[tuple[str, str]]) -> None:
    assert strip_hop_by_hop(given) == kept
    assert strip_hop_by_hop(proxy(*given)) == kept


def test_strip_hop_by_hop_accepts_a_dict() -> None:
    assert strip_hop_by_hop({"Connection": "close", "Accept": "a"}) == [("Accept", "a")]


def test_upstream_request_headers_full_trace() -> None:
    client = proxy(
        ("Host", "example.com"),
        ("Content-Length", "12"),
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "drop me"),
        ("Authorization", "Bearer user-token"),
        ("Durable-Token", "1.forged"),
        ("durable-run-id", "forged"),
        ("DURABLE-STEPS", "e30"),
        ("Durable-Attempt", "9"),
        ("Durable-Sidecar", "http://evil"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "spoofed"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("Expect", "100-continue"),
        ("Idempotency-Key", '"abc"'),
    )
    got = upstream_request_headers(
        client, client_ip="198.51.100.7", scheme="https", host="example.com", traceparent=TP
    )
    assert got == [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer user-token"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("Idempotency-Key", '"abc"'),
        ("X-Forwarded-For", "203.0.113.9, 198.51.100.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "example.com"),
        ("traceparent", TP),
    ]


def test_a_forwarded_for_named_by_connection_is_not_carried_on() -> None:
    client = proxy(
        ("X-Forwarded-For", "203.0.113.9"),
        ("Connection", "x-forwarded-for"),
        ("Accept", "a"),
    )
    got = upstream_request_headers(
        client, client_ip="198.51.100.7", scheme="http", host=None, traceparent=TP
    )
    assert got[:2] == [("Accept", "a"), ("X-Forwarded-For", "198.51.100.7")]


def test_upstream_request_headers_never_pass_gateway_headers() -> None:
    client = [(name.swapcase(), "x") for name in GATEWAY_HEADERS] + [
        (name.upper(), "y") for name in GATEWAY_HEADERS
    ]
    got = upstream_request_headers(client, client_ip=None, scheme="http", host=None, traceparent=TP)
    names = {name.lower() for name, _ in got}
    assert names.isdisjoint(name.lower() for name in GATEWAY_HEADERS)
    assert got == [("X-Forwarded-Proto", "http"), ("traceparent", TP)]


@pytest.mark.parametrize(
    ("existing", "client_ip", "expected"),
    [
        ([], "10.0.0.1", "10.0.0.1"),
        (["1.1.1.1"], "10.0.0.1", "1.1.1.1, 10.0.0.1"),
        (["1.1.1.1, 2.2.2.2"], "10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.1"),
        (["1.1.1.1", "2.2.2.2"], "10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.1"),  # two headers
        (["1.1.1.1"], None, "1.1.1.1"),  # unknown peer (a unix socket): chain kept
        ([], None, None),
        (["  "], "::1", "::1"),
    ],
)
def test_x_forwarded_for(existing: list[str], client_ip: str | None, expected: str | None) -> None:
    client = [("X-Forwarded-For", value) for value in existing]
    got = upstream_request_headers(
        client, client_ip=client_ip, scheme="http", host="h", traceparent=TP
    )
    values = [value for name, value in got if name.lower() == "x-forwarded-for"]
    assert values == ([] if expected is None else [expected])


def test_forwarded_host_absent_when_request_had_no_host() -> None:
    got = upstream_request_headers(
        [("X-Forwarded-Host", "spoofed")], client_ip=None, scheme="http", host=None, traceparent=TP
    )
    assert [name for name, _ in got] == ["X-Forwarded-Proto", "traceparent"]


VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("incoming", "kept_trace", "flags"),
    [
        (VALID, "0af7651916cd43dd8448eb211c80319c", "01"),
        (f"  {VALID}  ", "0af7651916cd43dd8448eb211c80319c", "01"),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "0af7651916cd43dd8448eb211c80319c",
            "00",
        ),
        # anything invalid starts a new, sampled trace
        (None, None, "01"),
        ("", None, "01"),
        ("garbage", None, "01"),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None, "01"),  # zero trace
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None, "01"),  # zero parent
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None, "01"),  # upper case
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None, "01"),  # version
        ("00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01", None, "01"),  # short
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None, "01"),
    ],
)
def test_traceparent_for(incoming: str | None, kept_trace: str | None, flags: str) -> None:
    got = traceparent_for(incoming, random.Random(11).randbytes)
    assert TRACEPARENT.fullmatch(got)
    _, trace_id, parent_id, got_flags = got.split("-")
    assert got_flags == flags
    assert int(parent_id, 16) != 0
    assert parent_id != "b7ad6b7169203331"  # the gateway is a new hop
    if kept_trace is None:
        assert int(trace_id, 16) != 0
        assert trace_id != "0af7651916cd43dd8448eb211c80319c"
    else:
        assert trace_id == kept_trace


def test_traceparent_never_uses_an_all_zero_id() -> None:
    draws = iter([bytes(16), b"\x01" * 16, bytes(8), b"\x02" * 8])
    got = traceparent_for(None, lambda size: next(draws))
    _, trace_id, parent_id, _ = got.split("-")
    assert (trace_id, parent_id) == ("01" * 16, "02" * 8)  # each after an all-zero draw


def test_traceparent_ids_are_zero_padded() -> None:
    got = traceparent_for(None, lambda size: bytes(size - 1) + b"\x01")
    assert got == f"00-{'0' * 31}1-{'0' * 15}1-01"


@pytest.mark.parametrize(
    ("keep_length", "expected"),
    [
        (True, [("Content-Type", "text/plain"), ("Content-Length", "5"), ("X-A", "1")]),
        (False, [("Content-Type", "text/plain"), ("X-A", "1")]),
    ],
)
def test_client_response_headers(keep_length: bool, expected: list[tuple[str, str]]) -> None:
    upstream = proxy(
        ("Content-Type", "text/plain"),
        ("Content-Length", "5"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close, X-B"),
        ("X-B", "2"),
        ("X-A", "1"),
    )
    assert client_response_headers(upstream, keep_length=keep_length) == expected


def test_client_response_headers_keeps_durable_retry_and_cookies() -> None:
    upstream = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Durable-Retry", "no")]
    assert client_response_headers(upstream) == upstream
