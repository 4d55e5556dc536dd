"""Finding where to resume an SSE stream after `Last-Event-ID`, and the gateway's events."""

from __future__ import annotations

import pytest

from gateway.http.sse import Seek, ends_event, event

BODY = b"id: 1\ndata: a\n\nid: 2\ndata: b\ndata: b2\n\n: comment\n\nid: 3\ndata: c\n\n"


@pytest.mark.parametrize("piece", [1, 2, 5, 7, len(BODY)])
def test_seek_finds_the_end_of_the_event_with_that_id_across_any_split(piece: int) -> None:
    seek = Seek("2")
    sent = b""
    for start in range(0, len(BODY), piece):
        data = BODY[start : start + piece]
        found = seek.scan(data)
        if found is not None:
            sent = data[found:] + BODY[start + piece :]
            break
    assert sent == b": comment\n\nid: 3\ndata: c\n\n"


def test_seek_reads_crlf_lines_and_ids_without_a_space() -> None:
    body = b"id:7\r\ndata: x\r\n\r\nid: 8\r\ndata: y\r\n\r\n"
    found = Seek("7").scan(body)
    assert found is not None and body[found:] == b"id: 8\r\ndata: y\r\n\r\n"


def test_seek_finds_nothing_for_an_unknown_id_or_a_field_that_only_starts_alike() -> None:
    assert Seek("9").scan(BODY) is None
    assert Seek("1").scan(b"identity: 1\ndata: x\n\nid: 11\ndata: y\n\n") is None


def test_a_gateway_event_closes_an_event_cut_off_first() -> None:
    assert event("durable-reset", {"attempt": 2}, at_boundary=True) == (
        b'event: durable-reset\ndata: {"attempt":2}\n\n'
    )
    assert event("durable-reset", {}, at_boundary=False).startswith(b"\n\nevent: ")
    assert ends_event(b"") and ends_event(b"x\n\n") and ends_event(b"x\r\n\r\n")
    assert not ends_event(b"data: to")
