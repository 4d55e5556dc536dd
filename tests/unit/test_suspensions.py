"""suspensions.first_match: which stored or posted event completes a wait, and as what."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.engine.suspensions import first_match, stored_events
from gateway.store import EventRow
from step_protocol import wire

PAID = wire.event_output("e1", "order.paid", {"order_id": "42", "total": 10}, 100.0)
OTHER = wire.event_output("e2", "order.paid", {"order_id": "7"}, 101.0)


@pytest.mark.parametrize(
    ("match", "events", "first"),
    [
        ({"data.order_id": "42"}, [OTHER, PAID], PAID),
        (b'{"data.order_id":"42"}', [OTHER, PAID], PAID),  # as stored
        (None, [OTHER, PAID], OTHER),  # no criteria: the first event
        (b"", [OTHER, PAID], OTHER),
        ({"data.total": 10.0}, [PAID], PAID),  # JSON numbers by value
        ({"data.order_id": "1"}, [OTHER, PAID], None),
        ({"data.order_id": "42"}, [], None),
    ],
)
def test_first_match(
    match: dict[str, Any] | bytes | None, events: list[dict[str, Any]], first: Any
) -> None:
    expected = None if first is None else orjson.dumps(first, option=orjson.OPT_SORT_KEYS)
    assert first_match(match, events) == expected


def test_stored_events_decode_lazily_so_a_match_stops_the_reading() -> None:
    rows = [
        EventRow("e2", "order.paid", orjson.dumps({"order_id": "7"}), 101.0),
        EventRow("e1", "order.paid", orjson.dumps({"order_id": "42", "total": 10}), 100.0),
        EventRow("bad", "order.paid", b"not json", 102.0),  # never decoded
    ]
    output = first_match({"data.order_id": "42"}, stored_events(rows))
    assert output is not None and orjson.loads(output) == PAID
