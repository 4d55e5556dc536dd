"""Request bodies read whole, with a size limit: the ingress's and the sidecar's one way.

Never buffers past the limit: a body that passes it is refused with a 413 problem, as
soon as its declared length or its bytes so far show it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import BodyTooLarge


def declared_too_large(request: web.BaseRequest, limit: int) -> bool:
    return request.content_length is not None and request.content_length > limit


def too_large(limit: int, setting: str, run_id: str | None = None) -> BodyTooLarge:
    return BodyTooLarge(f"request body is larger than {setting} ({limit} bytes)", run_id=run_id)


async def read_whole(
    request: web.BaseRequest, limit: int, setting: str, run_id: str | None = None
) -> bytes:
    """The whole body; 413 past `limit` bytes, naming the `setting` that sets it (a
    chunked body has no length to check up front)."""
    if declared_too_large(request, limit):
        raise too_large(limit, setting, run_id)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, setting, run_id)
        chunks.append(chunk)
    return b"".join(chunks)
