"""The step protocol on the wire: header names, the Durable-Steps codec, body shapes.

Shared by the gateway and the reference client so the two cannot drift apart.
Pure: no I/O here. See SPEC.md for the prose version.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final
from urllib.parse import quote

import orjson

PROTOCOL_VERSION: Final = 1

# Request headers the gateway adds to every attempt.
RUN_ID: Final = "Durable-Run-Id"
ATTEMPT: Final = "Durable-Attempt"
SIDECAR: Final = "Durable-Sidecar"
TOKEN: Final = "Durable-Token"
STEPS: Final = "Durable-Steps"
# Response header a backend sets to make a failure final.
RETRY: Final = "Durable-Retry"
RETRY_NO: Final = "no"
"""The one `Durable-Retry` value defined in v1: this failure is final."""

GATEWAY_HEADERS: Final = (RUN_ID, ATTEMPT, SIDECAR, TOKEN, STEPS)
"""Headers a client may not send through: the gateway strips and sets them."""

STEPS_FETCH: Final = "fetch"
"""Durable-Steps value meaning: too large for a header, call `GET {base}/steps`."""
STEPS_INLINE_MAX: Final = 4096
"""Longest inline Durable-Steps value; well under common 8 KiB header limits."""

MAX_STEP_ID: Final = 256
"""Longest step id, in characters."""


def encode_steps(steps: dict[str, Any]) -> str | None:
    """Durable-Steps value for completed steps: None when empty, `fetch` when too big."""
    if not steps:
        return None
    return encode_step_bytes(orjson.dumps(steps))


def encode_step_bytes(json_object: bytes) -> str:
    """Durable-Steps value for an already-serialized `{step_id: output}` object."""
    if len(json_object) * 4 // 3 > STEPS_INLINE_MAX:
        return STEPS_FETCH
    return base64.urlsafe_b64encode(json_object).rstrip(b"=").decode("ascii")


def decode_steps(value: str | None) -> dict[str, Any] | None:
    """Completed steps from a Durable-Steps value; None means `fetch` them.

    Accepts padded and unpadded base64url. Raises ValueError on a malformed value.
    """
    if not value:
        return {}
    value = value.strip()
    if value == STEPS_FETCH:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        steps = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"malformed {STEPS} header: {exc}") from exc
    if not isinstance(steps, dict):
        raise ValueError(f"{STEPS} must encode a JSON object")
    return steps


def step_path(step_id: str) -> str:
    """The URL path segment for a step id (ids are opaque: quote everything)."""
    return quote(step_id, safe="")


SYNC_QUERY: Final = "durable=sync"
"""Query string of a step write that must be answered only once committed."""

# Problem `type` slugs a backend acts on; the full `type` is a URI ending in the slug.
PROBLEM_STALE_ATTEMPT: Final = "stale-attempt"
PROBLEM_STEP_CONFLICT: Final = "step-conflict"


def problem_slug(type_uri: object) -> str:
    """The slug of a problem `type` (its last path segment), `""` when absent."""
    if not isinstance(type_uri, str):
        return ""
    return type_uri.rstrip("/").rsplit("/", 1)[-1]


# Sidecar bodies.
def put_output_body(output: Any) -> bytes:
    """Body of `PUT {base}/steps/{id}` that records a completed step."""
    return orjson.dumps({"output": output})


def put_error_body(message: str) -> bytes:
    """Body of `PUT {base}/steps/{id}` that records a failed try of a step."""
    return orjson.dumps({"error": {"message": message}})
