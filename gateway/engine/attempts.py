"""One upstream attempt: send the stored request with Durable-* headers, classify the result.

Upstream failures stop here: connection errors and timeouts become an AttemptOutcome,
never an exception, because retrying is the normal path. Never touches the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway import upstream
from gateway.engine.retries import AttemptOutcome, OutcomeKind, parse_retry_after
from gateway.engine.runs import Run
from gateway.engine.tokens import Tokens
from gateway.engine.traces import client_traceparent
from step_protocol import wire


@dataclass(slots=True)  # not frozen: built per request (see gateway.store)
class AttemptRequest:
    method: str
    upstream: str
    """The route's upstream base URL."""
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float
    """Seconds until response headers; also the longest silence while reading the body."""


def build_request(run: Run, attempt: int, tokens: Tokens, sidecar_url: str) -> AttemptRequest:
    """The stored request with this attempt's Durable-* headers and completed steps.

    The stored headers never carry Durable-* ones (the ingress strips what a client
    sends), so the gateway's are appended, not replaced. The client's `traceparent`, the
    last stored header when it sent one, is replaced by the attempt's: its span is the
    backend's parent.
    """
    req = run.request
    run_id = run.run_id
    headers = list(req.headers)
    traceparent = ("traceparent", run.trace.traceparent(attempt))
    if client_traceparent(headers) is None:
        headers.append(traceparent)
    else:
        headers[-1] = traceparent
    headers.append((wire.RUN_ID, run_id))
    headers.append((wire.ATTEMPT, str(attempt)))
    headers.append((wire.SIDECAR, f"{sidecar_url}/v1/runs/{run_id}"))
    headers.append((wire.TOKEN, tokens.attempt_token(run_id, attempt)))
    if run.steps:
        headers.append((wire.STEPS, wire.encode_step_bytes(run.steps_json())))
    route = run.route
    return AttemptRequest(
        req.method,
        route.upstream,
        req.path_qs,
        headers,
        req.body,
        route.settings.attempt_timeout,
    )


async def send(
    pool: upstream.Pool, req: AttemptRequest
) -> tuple[AttemptOutcome, upstream.Response | None]:
    """Send one attempt; the response, when there is one, comes back with its body unread."""
    try:
        resp = await pool.request(
            req.upstream, req.method, req.path_qs, req.headers, req.body, req.timeout
        )
    except TimeoutError as exc:  # the client says which wait ran out
        detail = str(exc) or f"no response within {req.timeout:g}s"
        return AttemptOutcome(OutcomeKind.TIMEOUT, detail=detail), None
    except upstream.UpstreamError as exc:
        return AttemptOutcome(OutcomeKind.CONNECT_ERROR, detail=_describe(exc)), None
    headers = resp.headers
    outcome = AttemptOutcome(
        OutcomeKind.RESPONSE,
        status=resp.status,
        retry_after=parse_retry_after(headers.get("Retry-After"), time.time()),
        no_retry=headers.get(wire.RETRY, "").strip().lower() == "no",
    )
    return outcome, resp


def broken_body(exc: BaseException) -> AttemptOutcome:
    """The outcome of a response whose body failed part-way."""
    kind = OutcomeKind.TIMEOUT if isinstance(exc, TimeoutError) else OutcomeKind.CONNECT_ERROR
    return AttemptOutcome(kind, detail=f"response body broke off: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
