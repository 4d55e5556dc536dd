"""The gateway's few exceptions. `http/problems.py` turns ProblemError into RFC 9457 JSON.

    GatewayError
    ├── ConfigError            bad configuration: key path, line, message
    ├── StoreUnavailable       the store cannot take a read or write now (locked, full,
    │                          read-only, I/O): transient, retried
    ├── StoreRejected          the store refuses one write for good (too big, a broken
    │                          constraint, a value it cannot bind): retrying cannot help
    └── ProblemError           answered to a caller as problem+json (status, type, title)
        ├── RouteNotFound          404
        ├── NotFound               404 (unknown run, wrong token, unknown step)
        ├── BadRequest             400 (bad JSON, step id too long, bad header)
        ├── Unauthorized           401 (no bearer token)
        ├── Forbidden              403 (token does not open this run)
        ├── BodyTooLarge           413 (request body, step output, run state, step count)
        ├── StepConflict           409 (different output for a completed step)
        ├── StaleAttempt           409 (a newer attempt has started)
        ├── IdempotencyMismatch    422 (same Idempotency-Key, different request)
        ├── Conflict               409 (an operator action that does not fit the run's state)
        └── Unavailable            503 (storage fault, queue timeout, shutting down)

Upstream failures are not exceptions: `attempts.py` turns them into an AttemptOutcome.
`problem_body` is the RFC 9457 body every problem response, live or stored, carries.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://durable-gateway.dev/problems/"


def problem_body(
    status: int, type_: str, title: str, detail: str, run_id: str | None = None, **extra: Any
) -> bytes:
    """The JSON body of a problem response."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if run_id is not None:
        body["run_id"] = run_id
    body.update(extra)
    return orjson.dumps(body)


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration value is wrong; says where: `file:line key.path: message`."""

    def __init__(self, path: str, message: str, *, line: int | None = None, source: str = ""):
        self.path = path
        self.message = message
        self.line = line
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.source or "config"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class StoreUnavailable(GatewayError):
    """The store could not take a read or a write; callers answer 503."""


class StoreMisconfigured(StoreUnavailable):
    """The store cannot be used as configured (a wrong password, no such database, no
    permission): waiting will not help, so a starting gateway exits at once."""


class StoreRejected(GatewayError):
    """The store refused a write for good: the writer drops it (alone) and says whose it was.

    Not a StoreUnavailable: retrying the same write fails the same way, so retrying
    it, as the writer does for a fault, would hold up every write queued behind it.
    """


class ProblemError(GatewayError):
    """An error answered as `application/problem+json`."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, run_id: str | None = None, **extra: Any):
        self.detail = detail
        self.run_id = run_id
        self.extra = extra
        super().__init__(detail)


class RouteNotFound(ProblemError):
    status, type, title = 404, "route-not-found", "No route matches this request"


class NotFound(ProblemError):
    status, type, title = 404, "not-found", "Not found"


class BadRequest(ProblemError):
    status, type, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    status, type, title = 401, "unauthorized", "Missing bearer token"


class Forbidden(ProblemError):
    status, type, title = 403, "forbidden", "Token does not open this resource"


class BodyTooLarge(ProblemError):
    status, type, title = 413, "too-large", "Payload too large"


class StepConflict(ProblemError):
    status, type, title = 409, "step-conflict", "Step already completed with another output"


class StaleAttempt(ProblemError):
    status, type, title = 409, "stale-attempt", "A newer attempt of this run has started"


class Conflict(ProblemError):
    status, type, title = 409, "conflict", "Conflict with the run's state"


class ResponseNotKept(ProblemError):
    status, type, title = 410, "response-not-kept", "Response too large to keep"


class IdempotencyMismatch(ProblemError):
    status, type, title = (
        422,
        "idempotency-key-reused",
        "Idempotency key reused for another request",
    )


class Unavailable(ProblemError):
    status, type, title = 503, "unavailable", "Service unavailable"
