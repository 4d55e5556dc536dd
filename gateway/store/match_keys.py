"""Index keys of event waits, for every dialect: a wait is found by bytes, not by Python.

A wait's `match` is stored as `wire.canonical_json` of {dotted path: value}, next to its
sorted path list; an event builds the same bytes from its own values at those paths.
Equal bytes exactly when `wire.event_matches` holds. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from step_protocol import wire


def wait_columns(match: bytes | None) -> tuple[str, bytes]:
    """A wait's (paths, match) columns from its match as JSON (None: `{}`, any event).

    Canonical again here, whoever wrote the bytes, so the index never depends on a
    caller having normalised its numbers.
    """
    criteria = orjson.loads(match) if match else {}
    if not isinstance(criteria, dict):
        raise ValueError(f"a wait's match must be a JSON object, not {match!r}")
    return orjson.dumps(sorted(criteria)).decode(), wire.canonical_json(criteria)


def event_key(event: Mapping[str, Any], paths: list[str]) -> bytes | None:
    """The `match` bytes of the waits with these paths that this event fits; None when
    one path leads nowhere in it (then no such wait fits)."""
    values: dict[str, Any] = {}
    for path in paths:
        found = wire.lookup(event, path)
        if found is wire.MISSING:
            return None
        values[path] = found
    return wire.canonical_json(values)


def event_output(event: Mapping[str, Any]) -> bytes:
    """A matched event as a wait step's output: the event object, keys sorted (what
    `gateway.engine.suspensions.first_match` gives for a stored event)."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


class RecordedEvent:
    """An event being recorded, decoded only once a wait of its name needs it."""

    __slots__ = ("event_id", "name", "data", "ts", "_object", "_output")

    def __init__(self, event_id: str, name: str, data: bytes, ts: float) -> None:
        self.event_id, self.name, self.data, self.ts = event_id, name, data, ts
        self._object: dict[str, Any] | None = None
        self._output: bytes | None = None

    @property
    def object(self) -> dict[str, Any]:
        """The event object waits match (`wire.event_output`)."""
        if self._object is None:
            data = orjson.loads(self.data)
            self._object = wire.event_output(self.event_id, self.name, data, self.ts)
        return self._object

    @property
    def output(self) -> bytes:
        """What a wait it completes stores as its step (`event_output`)."""
        if self._output is None:
            self._output = event_output(self.object)
        return self._output

    def key(self, paths: str) -> bytes | None:
        """`event_key` for a path list as stored (a JSON array)."""
        return event_key(self.object, orjson.loads(paths))

    def fits(self, match: bytes | None) -> bool:
        """Whether an unindexed wait's match (JSON, or None) fits this event."""
        return wire.event_matches(orjson.loads(match) if match else None, self.object)
