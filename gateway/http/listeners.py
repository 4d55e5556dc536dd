"""What the ingress's and the sidecar's handlers share on aiohttp's low-level server.

Those two listeners route requests themselves, without `web.Application` (see
`ingress.listener`), so this holds what its router did for them: errors answered as
problem+json, path segments decoded, `Expect: 100-continue` answered; and reading a
whole body without buffering past its limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, hdrs, web

from gateway.errors import BodyTooLarge
from gateway.http import problems

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def guard(handler: Handler) -> Handler:
    """The handler, answering errors as `problems_middleware` does on the admin listener."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - `answer` re-raises what it does not answer
            return problems.answer(request, exc)

    return guarded


def segments(request: web.BaseRequest, prefix: str, path: str | None = None) -> list[str] | None:
    """The path's segments after `prefix`, decoded as aiohttp's router decodes a match
    (`%2F` stays inside its segment); None when the path does not start with `prefix`.
    `path` is the request's, so decoded, when the caller has cleaned it (`paths.clean`)."""
    if path is None:
        path = request.rel_url.path_safe
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].split("/")
    return [_unquote_safe(part) for part in parts] if "%" in path else parts


def _unquote_safe(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


async def expect_continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` before the body is read, as aiohttp's router would
    have before the handler ran; call it once the request is known to be wanted."""
    expect = request.headers.get(hdrs.EXPECT)
    if not expect or request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the answer


def _too_large(limit: int, setting: str, run_id: str | None = None) -> BodyTooLarge:
    return BodyTooLarge(f"request body is larger than {setting} ({limit} bytes)", run_id=run_id)


async def read_whole(
    request: web.BaseRequest, limit: int, setting: str, run_id: str | None = None
) -> bytes:
    """The whole body; 413 past `limit` bytes, naming the `setting` that sets it, before
    `100 Continue` when the length is declared, or as the bytes arrive when chunked."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, setting, run_id)
    await expect_continue(request)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, setting, run_id)
        chunks.append(chunk)
    return b"".join(chunks)
