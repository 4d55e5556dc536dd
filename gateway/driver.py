"""The single owner of live runs: runs each run's attempts, applies step writes, wakes waiters.

Everything that changes a run goes through here; other modules report to it. A run is
driven by a task owned by the driver, never by the ingress handler, so a client that
disconnects cancels nothing. Writes are queued on the writer; only `sync` ones are awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway import attempts, metrics
from gateway.attempts import AttemptRequest
from gateway.config import RouteConfig
from gateway.errors import NotFound, StaleAttempt, Unavailable
from gateway.headers import client_response_headers
from gateway.limits import Limits
from gateway.problems import CONTENT_TYPE, problem_body
from gateway.retries import AttemptOutcome, Verdict, decide
from gateway.runs import Run, RunStatus, StepResult
from gateway.store import (
    CreateRun,
    FinishRun,
    PutStep,
    RecordAttempt,
    StoredRequest,
    StoredResponse,
    UpdateRun,
)
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.tokens import Tokens, new_run_id
from step_protocol import wire

log = logging.getLogger("gateway.driver")

LEASE_TTL = 30.0
"""Seconds a run's lease lasts unless renewed; another node may take the run after it."""


class ClientSink:
    """The held client's connection: the attempt that turns out final streams into it."""

    __slots__ = ("request", "response", "alive", "done")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.alive = True
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        resp = web.StreamResponse(status=status)
        for name, value in headers:
            resp.headers.add(name, value)
        self.response = resp
        try:
            await resp.prepare(self.request)
        except (ConnectionError, RuntimeError):
            self.alive = False

    async def write(self, chunk: bytes) -> None:
        if self.alive and self.response is not None:
            try:
                await self.response.write(chunk)
            except (ConnectionError, RuntimeError):
                self.alive = False  # the client left; the run goes on without it

    async def end(self, ok: bool) -> None:
        """Finish the client's response; on a broken upstream body, cut the connection."""
        if self.alive and self.response is not None:
            try:
                if ok:
                    await self.response.write_eof()
                elif self.request.transport is not None:
                    self.request.transport.close()
            except (ConnectionError, RuntimeError):
                pass
        if not self.done.done():
            self.done.set_result(None)


class _QueueTimeout(Exception):
    """A new run's first attempt waited past its route's queue_timeout."""


@dataclass(slots=True, eq=False)
class LiveRun:
    """A run this process drives, with what its waiters need."""

    run: Run
    sink: ClientSink | None = None
    """The held original client, until an attempt streams into it or it is redirected."""
    in_attempt: bool = False
    task: asyncio.Task[None] | None = None
    created: asyncio.Future[None] | None = None
    """Resolves once the run's record is committed: wait for it before handing out its URL."""
    idempotency: tuple[str, str, str] | None = None
    """(route, key, fingerprint) when the request carried an Idempotency-Key."""
    final_commit: asyncio.Future[None] | None = None
    """Resolves once the final response is committed."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self) -> asyncio.Event:
        """An event set at the run's next change; take it before reading the state."""
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class Driver:
    def __init__(
        self,
        *,
        writer: Writer,
        session: aiohttp.ClientSession,
        tokens: Tokens,
        sidecar_url: str,
        sync_steps: bool,
        limits: Limits,
    ) -> None:
        self.writer = writer
        self.session = session
        self.tokens = tokens
        self.sidecar_url = sidecar_url.rstrip("/")
        self.sync_steps = sync_steps
        self.limits = limits
        self.accepting = True
        self._live: dict[str, LiveRun] = {}
        self._rng = random.Random()
        self._in_attempt = 0
        self._drained = asyncio.Event()
        self._idempotent: dict[tuple[str, str], LiveRun] = {}
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{new_run_id()[:8]}"
        """Owner name of this process's leases."""

    def get(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def admit(
        self,
        route: RouteConfig,
        request: StoredRequest,
        *,
        limit_key: str = "",
        idempotency: tuple[str, str] | None = None,
    ) -> LiveRun:
        """Create a run, queue its record, and start driving it; never waits on storage.

        `idempotency` is (key, fingerprint); the key is stored with the run in one
        transaction, and indexed here so a concurrent duplicate attaches at once.
        """
        if not self.accepting:
            raise Unavailable("the gateway is shutting down")
        now = time.time()
        run = Run(new_run_id(), route, request, now, attempt=1, limit_key=limit_key)
        live = LiveRun(run)
        live.created = self.writer.submit(
            CreateRun(
                run.run_id,
                route.name,
                request,
                now,
                attempt=1,
                owner=self.node_id,
                lease_until=now + LEASE_TTL,
                idempotency=idempotency,
            )
        )
        if idempotency is not None:
            live.idempotency = (route.name, idempotency[0], idempotency[1])
            self._idempotent[live.idempotency[:2]] = live
        self._start(live, resumed=False)
        return live

    def adopt(self, run: Run) -> LiveRun:
        """Drive a run recovered from the store, from its next attempt."""
        live = LiveRun(run)
        self._start(live, resumed=True)
        return live

    def _start(self, live: LiveRun, *, resumed: bool) -> None:
        self._live[live.run.run_id] = live
        metrics.IN_FLIGHT.inc()
        live.task = spawn(self._drive(live, resumed=resumed), name=f"run-{live.run.run_id}")

    def attached(self, route: str, key: str) -> LiveRun | None:
        """The live run an idempotency key belongs to, if it is live here."""
        return self._idempotent.get((route, key))

    # --- steps (reported by the sidecar) ------------------------------------------

    async def put_step(
        self, run_id: str, attempt: int, step_id: str, output: bytes, sync: bool
    ) -> StepResult:
        """Record a step for an attempt; answers once queued, or once committed when sync."""
        live = self._live.get(run_id)
        if live is None:
            raise NotFound("run is not running", run_id=run_id)
        run = live.run
        if attempt != run.attempt or run.finished:
            raise StaleAttempt(
                f"attempt {attempt} is superseded (current: {run.attempt})", run_id=run_id
            )
        if not self.writer.healthy:
            raise Unavailable(
                f"storage cannot take writes ({self.writer.last_error}); retry the step later",
                run_id=run_id,
            )
        result = run.record_step(step_id, output)
        metrics.STEPS.labels(result.value).inc()
        if result is StepResult.CREATED:
            done = self.writer.submit(PutStep(run_id, step_id, output, attempt, time.time()))
            if sync or self.sync_steps:
                await done
        return result

    def step_error(self, run_id: str, attempt: int, step_id: str, message: str) -> None:
        live = self._live.get(run_id)
        if live is None:
            raise NotFound("run is not running", run_id=run_id)
        if attempt != live.run.attempt:
            raise StaleAttempt(f"attempt {attempt} is superseded", run_id=run_id)
        live.run.step_errors.append((step_id, attempt, message[:2000]))
        metrics.STEPS.labels("error").inc()
        log.info(
            "step %s failed on attempt %d: %s",
            step_id,
            attempt,
            message[:200],
            extra={"run_id": run_id},
        )

    # --- the run loop -----------------------------------------------------------------

    async def _drive(self, live: LiveRun, *, resumed: bool = False) -> None:
        """Attempts until a final response: a resumed run first waits for its wake time."""
        run = live.run
        policy = run.route.settings.retry
        try:
            if resumed:
                if run.wake_at is not None and run.wake_at > time.time():
                    await asyncio.sleep(run.wake_at - time.time())
                await self._next_attempt(live)
            while True:
                outcome, stored = await self._attempt_in_slot(live)
                if stored is not None:
                    self._finish(live, stored)
                    return
                decision = decide(outcome, policy, run.attempt, self._rng)
                if decision.verdict is Verdict.FINAL:
                    self._finish(live, self._failure_response(run, outcome, decision.reason))
                    return
                metrics.RETRIES.labels(run.route.name).inc()
                run.status = RunStatus.BACKOFF
                run.wake_at = time.time() + decision.delay
                log.info(
                    "attempt %d failed (%s); retry in %.3fs",
                    run.attempt,
                    outcome.detail or f"status {outcome.status}",
                    decision.delay,
                    extra={"run_id": run.run_id},
                )
                self.writer.submit(
                    UpdateRun(run.run_id, RunStatus.BACKOFF, run.attempt, run.wake_at, time.time())
                )
                live.notify()
                await asyncio.sleep(decision.delay)
                await self._next_attempt(live)
        except _QueueTimeout as exc:
            self._finish(live, self._problem(run, 503, "queue-timeout", str(exc)))
        finally:
            if live.sink is not None and not live.run.finished:
                live.sink = None

    async def _next_attempt(self, live: LiveRun) -> None:
        """Number the next attempt, durably, before it is sent.

        Waiting for the commit here (never on the first attempt, which CreateRun numbers)
        means a restarted gateway always starts past any attempt a dead process may still
        have running, so no two attempts ever share a number or a sidecar token.
        """
        run = live.run
        run.attempt += 1
        run.status = RunStatus.RUNNING
        run.wake_at = None
        await self.writer.submit(
            UpdateRun(run.run_id, RunStatus.RUNNING, run.attempt, None, time.time())
        )
        live.notify()

    async def _attempt_in_slot(self, live: LiveRun) -> tuple[AttemptOutcome, StoredResponse | None]:
        """One attempt inside the route's concurrency slot, counted and recorded."""
        run = live.run
        attempt = run.attempt
        started = time.time()
        live.in_attempt = True
        self._in_attempt += 1
        self._drained.clear()
        try:
            async with self._slot(run, wait_forever=attempt > 1):
                outcome, stored = await self._attempt(live, attempt)
        finally:
            live.in_attempt = False
            self._in_attempt -= 1
            if not self._in_attempt:
                self._drained.set()
        metrics.ATTEMPTS.labels(run.route.name, outcome.kind.value).inc()
        self.writer.submit(
            RecordAttempt(
                run.run_id,
                attempt,
                started,
                time.time(),
                outcome.kind.value,
                outcome.status,
                outcome.detail,
            )
        )
        return outcome, stored

    @contextlib.asynccontextmanager
    async def _slot(self, run: Run, *, wait_forever: bool) -> AsyncIterator[None]:
        """A place in the route's concurrency queue for one attempt.

        `queue_timeout` bounds only the first attempt's wait (the client is refused with
        a 503); a run that has started waits as long as it takes for its retries.
        """
        limiter = self.limits.concurrency.get(run.route.name)
        if limiter is None:
            yield
            return
        while True:
            try:
                await limiter.acquire(run.limit_key)
                break
            except Unavailable as exc:
                if not wait_forever:
                    raise _QueueTimeout(str(exc)) from None
        try:
            yield
        finally:
            limiter.release(run.limit_key)

    async def _attempt(
        self, live: LiveRun, attempt: int
    ) -> tuple[AttemptOutcome, StoredResponse | None]:
        """One attempt; a final response comes back stored (and streamed to a held client)."""
        run = live.run
        sent = time.perf_counter()
        outcome, resp = await attempts.send(self.session, self._attempt_request(run, attempt))
        if resp is None:
            return outcome, None
        metrics.UPSTREAM_LATENCY.labels(run.route.name).observe(time.perf_counter() - sent)
        try:
            if (
                decide(outcome, run.route.settings.retry, attempt, self._rng).verdict
                is Verdict.RETRY
            ):
                return outcome, None  # the body of a retried response is not kept
            return await self._receive(live, resp, outcome)
        finally:
            resp.release()

    async def _receive(
        self, live: LiveRun, resp: aiohttp.ClientResponse, outcome: AttemptOutcome
    ) -> tuple[AttemptOutcome, StoredResponse | None]:
        """Read a final response, teeing it into the held client as it arrives."""
        headers = client_response_headers(resp.headers.items())
        headers.append((wire.RUN_ID, live.run.run_id))
        sink, live.sink = live.sink, None
        if sink is not None:
            await sink.start(resp.status, headers)
        chunks: list[bytes] = []
        try:
            async for chunk in resp.content.iter_any():
                chunks.append(chunk)
                if sink is not None:
                    await sink.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if sink is not None:
                await sink.end(ok=False)
            return attempts.broken_body(exc), None
        stored = StoredResponse(resp.status, headers, b"".join(chunks))
        if sink is not None:
            self._finish(live, stored)
            await sink.end(ok=True)
        return outcome, stored

    def _attempt_request(self, run: Run, attempt: int) -> AttemptRequest:
        req = run.request
        headers = CIMultiDict(req.headers)
        headers[wire.RUN_ID] = run.run_id
        headers[wire.ATTEMPT] = str(attempt)
        headers[wire.SIDECAR] = f"{self.sidecar_url}/v1/runs/{run.run_id}"
        headers[wire.TOKEN] = self.tokens.attempt_token(run.run_id, attempt)
        if run.steps:
            headers[wire.STEPS] = wire.encode_step_bytes(run.steps_json())
        return AttemptRequest(
            req.method,
            run.route.upstream + req.path_qs,
            headers,
            req.body,
            run.route.settings.attempt_timeout,
        )

    def _failure_response(self, run: Run, outcome: AttemptOutcome, reason: str) -> StoredResponse:
        """The 502 a run ends with when no attempt produced a response."""
        detail = (
            f"upstream {run.route.upstream} gave no response: "
            f"{outcome.detail or outcome.kind.value}; {reason}"
        )
        return self._problem(run, 502, "upstream-failed", detail, outcome=outcome.kind.value)

    def _problem(
        self, run: Run, status: int, type_: str, detail: str, **extra: object
    ) -> StoredResponse:
        """A gateway-made final response for a run, as problem+json."""
        title = "Upstream failed" if status == 502 else "Service unavailable"
        body = problem_body(status, type_, title, detail, run.run_id, attempts=run.attempt, **extra)
        headers = [("Content-Type", CONTENT_TYPE), (wire.RUN_ID, run.run_id)]
        return StoredResponse(status, headers, body)

    def _finish(self, live: LiveRun, response: StoredResponse) -> None:
        run = live.run
        if run.finished:
            return
        run.response = response
        run.status = RunStatus.SUCCEEDED if response.status < 400 else RunStatus.FAILED
        run.wake_at = None
        metrics.RUNS.labels(run.route.name, run.status.value).inc()
        committed = live.final_commit = self.writer.submit(
            FinishRun(run.run_id, run.status.value, response, time.time())
        )
        committed.add_done_callback(lambda _: self._forget(run.run_id))
        live.notify()

    def _forget(self, run_id: str) -> None:
        """Drop a finished run from memory once the store has it."""
        live = self._live.pop(run_id, None)
        if live is not None:
            metrics.IN_FLIGHT.dec()
            if live.idempotency is not None:
                self._idempotent.pop(live.idempotency[:2], None)

    # --- shutdown -----------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Stop admitting; let in-flight attempts finish up to `grace`; cancel the rest.

        A run cut off here stays unfinished in the store, for the next start to resume.
        """
        self.accepting = False
        if self._in_attempt:
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("%d attempts still in flight after %.1fs", self._in_attempt, grace)
        tasks = [
            lv.task for lv in self._live.values() if lv.task is not None and not lv.task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for live in self._live.values():
            live.notify()  # held clients get their result URL instead of waiting
        unfinished = sum(1 for lv in self._live.values() if not lv.run.finished)
        if unfinished:
            log.warning("%d runs left unfinished for the next start", unfinished)
