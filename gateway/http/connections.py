"""Client connections on the three listeners: deadlines, caps, one log line per fault.

Built on aiohttp's low-level server, which makes one `RequestHandler` per connection and
already closes idle kept-alive ones (`keepalive_timeout`) and bounds header sizes. This
adds what it lacks: a deadline for a request's headers, one for a body that stalls, a cap
on open connections, and client faults (malformed requests, clients gone mid-upload) told
in one info line instead of an error traceback. It never reads or answers a request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, Final, final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from gateway.config import ServerConfig
from gateway.http.problems import problem_response
from gateway.logs import Burst, Throttle

log = logging.getLogger("gateway.http.connections")

UPSTREAM_RESERVE: Final = 1024
"""File descriptors kept out of the clients' reach, for upstream connections and the
store: at most the soft limit less this (or half of it) are client connections."""


@dataclass(frozen=True, slots=True)
class Policy:
    """What one listener allows its connections (from `server:`)."""

    listener: str
    """`ingress`, `sidecar` or `admin`, for log lines."""
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, listener: str, server: ServerConfig) -> Policy:
        return cls(
            listener,
            server.header_timeout,
            server.body_timeout,
            server.keepalive_timeout,
            server.max_connections,
        )


@final
class Budget:
    """Client connections open on all listeners together, against what the process's
    file descriptors allow, so idle clients can never starve upstream connections."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


class Server(web.Server):
    """aiohttp's low-level server, making `Connection`s under a `Policy`."""

    def __init__(self, handler: Any, *, policy: Policy, budget: Budget, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=policy.keepalive_timeout, **kwargs)
        self.policy = policy
        self.budget = budget
        self.open = 0
        self.faults = Throttle(log)
        self._refusing = Burst(log, f"{policy.listener} listener", failing="refusing connections")

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)

    def admit(self, peer: str) -> bool:
        """Count a new connection in, or say why it is refused."""
        cap = self.policy.max_connections
        if self.open >= cap:
            self._refusing.failed(f"{cap} open (server.max_connections); last from {peer}")
            return False
        if self.budget.open >= self.budget.limit:
            self._refusing.failed(
                f"{self.budget.open} client connections on all listeners, as many as the "
                f"file descriptor limit allows; last from {peer}"
            )
            return False
        self._refusing.ok()
        self.open += 1
        self.budget.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
        self.budget.open -= 1


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `Server` (the admin listener's application)."""

    __slots__ = ("_policy", "_budget")

    def __init__(
        self, app: web.Application, *, policy: Policy, budget: Budget, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._policy = policy
        self._budget = budget

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the application, as aiohttp's does
        return Server(
            made.request_handler,
            request_factory=made.request_factory,
            policy=self._policy,
            budget=self._budget,
            **made._kwargs,
        )


def _peer(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)


def _client_fault(exc: BaseException | None) -> tuple[str, str] | None:
    """What a client did wrong and the detail, when `exc` is its fault, not the gateway's."""
    if isinstance(exc, HttpProcessingError):
        return "malformed request", _one_line(exc.message or type(exc).__name__)
    if isinstance(exc, RequestPayloadError):
        return "malformed request body", _one_line(str(exc))
    if isinstance(exc, ConnectionError):
        return "connection lost mid-request", _one_line(str(exc) or type(exc).__name__)
    return None


def _one_line(text: str, limit: int = 200) -> str:
    """aiohttp's parser messages span lines (the bytes, then a caret under the fault):
    one line, bounded, as the bytes are the client's."""
    kept = (part.strip() for part in text.splitlines())
    line = " ".join(part for part in kept if part and part.strip("^"))
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Connection(RequestHandler):
    """One client connection: aiohttp's handler plus the policy's deadlines and cap.

    One timer per connection, armed only while a request is in flight (headers coming,
    body coming or being handled): an idle kept-alive connection is aiohttp's, which
    closes it after `keepalive_timeout`.
    """

    __slots__ = ("_edge", "_admitted", "_peer", "_headers_since", "_progress", "_timer", "_why")

    def __init__(self, manager: Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._admitted = False
        self._peer = "?"
        self._headers_since: float | None = None
        """When the current request's headers began: the connection's start, or the
        first byte after an idle spell; None once they are in."""
        self._progress = 0.0
        """When the body last moved, or the gateway last was not waiting for it."""
        self._timer: asyncio.TimerHandle | None = None
        self._why: str | None = None
        """Why the gateway closed this connection, once it has (and said so)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = _peer(transport)
        if not self._edge.admit(self._peer):
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self.keep_alive(True)  # cancels aiohttp's idle timer: the header deadline governs
        now = self._loop.time()
        self._headers_since = self._progress = now
        self._watch(now + self._edge.policy.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:  # refused: aiohttp never saw it
            return
        self._admitted = False
        self._edge.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        now = self._loop.time()
        self._progress = now
        if self._request_count != count:  # a request's headers are in
            self._headers_since = None
            if self._timer is None:
                self._watch(now + self._edge.policy.body_timeout)
        elif self._headers_since is None and self._awaiting_request():
            # The first bytes after an idle spell: from now on the header deadline
            # applies, not aiohttp's idle timer, which this cancels.
            self._headers_since = now
            self.keep_alive(True)
            if self._timer is None:
                self._watch(now + self._edge.policy.header_timeout)

    def _awaiting_request(self) -> bool:
        """Waiting for a request's headers (aiohttp's own test for an idle handler)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _watch(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        """The deadlines: headers, then a body the gateway waits for; idle is aiohttp's."""
        self._timer = None
        if self.transport is None or self._force_close:
            return
        policy = self._edge.policy
        now = self._loop.time()
        if self._awaiting_request():
            since = self._headers_since
            if since is None:  # idle between requests
                return
            if now >= since + policy.header_timeout:
                self._cut(f"no complete request headers within {policy.header_timeout:g}s")
            else:
                self._watch(since + policy.header_timeout)
            return
        request = self._current_request
        if request is None or request.content.is_eof():  # being handled: look again later
            self._watch(now + policy.body_timeout)
            return
        if request.content._waiter is None:  # not read now (flow control): not the client's
            self._progress = now
            self._watch(now + min(1.0, policy.body_timeout / 2))
        elif now >= self._progress + policy.body_timeout:
            self._cut(f"request body stalled for {policy.body_timeout:g}s")
        else:
            self._watch(self._progress + policy.body_timeout)

    def _cut(self, why: str) -> None:
        self._why = why
        listener = self._edge.policy.listener
        self._edge.faults.info("%s: closed connection from %s: %s", listener, self._peer, why)
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A client's fault in one info line, answered 400 if anything can be; the rest
        (the gateway's own errors) as aiohttp does, with their traceback."""
        fault = _client_fault(exc)
        if fault is None:
            return super().handle_error(request, status, exc, message)
        what, detail = fault
        if self._why is None:  # else already told, as the reason it was closed
            listener = self._edge.policy.listener
            self._edge.faults.info("%s: %s from %s: %s", listener, what, self._peer, detail)
        if isinstance(exc, ConnectionError) or request.writer.output_size > 0:
            raise ConnectionError(detail)  # aiohttp drops the connection quietly
        response = problem_response(400, "bad-request", "Bad request", f"{what}: {detail}")
        response.force_close()
        return response


def raise_fd_limit(listeners: int, per_listener: int) -> Budget:
    """Raise the process's soft limit on open files to its hard limit, log it, and
    return the client connections it leaves room for beside upstream ones."""
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != infinity:
        # An infinite hard limit is no setting a kernel takes; macOS stops at 10240.
        for target in (hard, 1 << 20, 10240) if hard == infinity else (hard,):
            if target == infinity or target <= soft:
                continue
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            soft = target
            break
    usable = 1 << 30 if soft == infinity else soft
    limit = max(1, min(usable - UPSTREAM_RESERVE, usable // 2))
    shown = f"{'unlimited' if soft == infinity else soft} (hard limit "
    shown += f"{'unlimited' if hard == infinity else hard})"
    if limit < listeners * per_listener:
        log.warning(
            "open files limited to %s: at most %d client connections on all listeners"
            " together, fewer than %d x server.max_connections (%d); raise the limit"
            " (ulimit -n, LimitNOFILE=) or lower server.max_connections",
            shown,
            limit,
            listeners,
            per_listener,
        )
    else:
        log.info("open files limited to %s", shown)
    return Budget(limit)
