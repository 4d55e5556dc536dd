"""Plain reverse proxy for `durable: false` routes: stream the request up, the response down.

No run, no store, no retries: the upstream's answer (or a 502) goes straight back.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.config import RouteConfig
from gateway.engine.tokens import random_bytes
from gateway.http.problems import problem_response
from gateway.upstream.headers import (
    client_response_headers,
    traceparent_for,
    upstream_request_headers,
)


def new_session() -> aiohttp.ClientSession:
    """The plain routes' upstream client: keep-alive pool, bodies passed through undecoded."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=60),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
    )


def upstream_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The client's headers as an upstream gets them: hop-by-hop ones out, X-Forwarded-* in."""
    traceparent = traceparent_for(request.headers.get("traceparent"), random_bytes)
    return _forwarded(request, traceparent)


def stored_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The headers a run stores, as its attempts send them but for `traceparent`: the
    client's, kept as sent and last (where `traces.client_traceparent` looks), since the
    run's trace derives from it (each attempt sends its own, see `engine.traces`)."""
    return _forwarded(request, request.headers.get("traceparent"))


def _forwarded(request: web.BaseRequest, traceparent: str | None) -> list[tuple[str, str]]:
    return upstream_request_headers(
        request.headers,
        client_ip=request.remote,
        scheme=request.scheme,
        host=request.host,
        traceparent=traceparent,
    )


async def forward(
    request: web.BaseRequest, route: RouteConfig, session: aiohttp.ClientSession, path_qs: str
) -> web.StreamResponse:
    """Stream the request to `route`'s upstream at `path_qs` (the ingress's cleaned path)."""
    headers = upstream_headers(request)
    timeout = route.settings.attempt_timeout
    try:
        async with asyncio.timeout(timeout):
            upstream = await session.request(
                request.method,
                URL(route.upstream + path_qs, encoded=True),  # as cleaned: yarl adds nothing
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return problem_response(
            502,
            "upstream-failed",
            "Upstream failed",
            f"upstream {route.upstream} gave no response: {type(exc).__name__}: {exc}",
        )
    try:
        response = web.StreamResponse(status=upstream.status)
        for name, value in client_response_headers(upstream.headers.items()):
            response.headers.add(name, value)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError):
            if request.transport is not None:
                request.transport.close()  # tell the client the body broke off
            return response
        await response.write_eof()
        return response
    finally:
        upstream.release()
