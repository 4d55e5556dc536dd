"""One upstream attempt: send the stored request with Durable-* headers, classify the result.

Upstream failures stop here: connection errors and timeouts become an AttemptOutcome,
never an exception, because retrying is the normal path. Never touches the store.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from gateway.retries import AttemptOutcome, OutcomeKind, parse_retry_after
from gateway.runs import Run
from gateway.tokens import Tokens
from step_protocol import wire


@dataclass(frozen=True, slots=True)
class AttemptRequest:
    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes
    timeout: float
    """Seconds until response headers; also the longest silence while reading the body."""


def build_request(run: Run, attempt: int, tokens: Tokens, sidecar_url: str) -> AttemptRequest:
    """The stored request with this attempt's Durable-* headers and completed steps."""
    req = run.request
    headers = CIMultiDict(req.headers)
    headers[wire.RUN_ID] = run.run_id
    headers[wire.ATTEMPT] = str(attempt)
    headers[wire.SIDECAR] = f"{sidecar_url}/v1/runs/{run.run_id}"
    headers[wire.TOKEN] = tokens.attempt_token(run.run_id, attempt)
    if run.steps:
        headers[wire.STEPS] = wire.encode_step_bytes(run.steps_json())
    return AttemptRequest(
        req.method,
        run.route.upstream + req.path_qs,
        headers,
        req.body,
        run.route.settings.attempt_timeout,
    )


def new_session() -> aiohttp.ClientSession:
    """The one upstream client: keep-alive pool, bodies passed through undecoded."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=60),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def send(
    session: aiohttp.ClientSession, req: AttemptRequest
) -> tuple[AttemptOutcome, aiohttp.ClientResponse | None]:
    """Send one attempt; the response, when there is one, comes back with its body unread."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=req.timeout, sock_connect=req.timeout)
    try:
        async with asyncio.timeout(req.timeout):
            resp = await session.request(
                req.method,
                req.url,
                headers=req.headers,
                data=req.body or None,
                allow_redirects=False,
                timeout=timeout,
            )
    except TimeoutError:
        return AttemptOutcome(
            OutcomeKind.TIMEOUT, detail=f"no response within {req.timeout:g}s"
        ), None
    except aiohttp.ClientError as exc:
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
