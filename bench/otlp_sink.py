"""A stand-in trace collector for the tracing benchmark: accepts `POST /v1/traces` and
answers 200, counting requests and bytes, without decoding or keeping anything.

Runs at the lowest CPU priority, so on a shared machine it takes what a collector on
another host would take from the gateway: next to nothing.

    python -m bench.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

STATS: web.AppKey[dict[str, int]] = web.AppKey("stats", dict)


async def traces(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    async for chunk in request.content.iter_any():  # read to the end, never held
        stats["bytes"] += len(chunk)
    stats["requests"] += 1
    # An empty body is an empty ExportTraceServiceResponse: nothing rejected.
    return web.Response(content_type="application/x-protobuf")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    """`{"requests": N, "bytes": N}` since start: exports received and their size as sent."""
    return web.json_response(request.app[STATS])


def make_app() -> web.Application:
    app = web.Application()
    app[STATS] = {"requests": 0, "bytes": 0}
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/_health", health)
    app.router.add_get("/_stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="OTLP/HTTP sink: answers 200, decodes nothing")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.nice(19)
    # Compressed exports are counted as sent, not inflated: that would be decoding work.
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        auto_decompress=False,
    )


if __name__ == "__main__":
    main()
