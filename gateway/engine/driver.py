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
import secrets
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from gateway import metrics, upstream
from gateway.config import RouteConfig
from gateway.engine import attempts, suspensions
from gateway.engine.limits import ConcurrencyLimiter, Limits
from gateway.engine.live import LiveRun
from gateway.engine.retries import AttemptOutcome, Decision, Verdict, decide
from gateway.engine.runs import Run, StepResult, stored_problem
from gateway.engine.tokens import Tokens, new_run_id
from gateway.errors import NotFound, StaleAttempt, Unavailable
from gateway.store import (
    CreateRun,
    FinishRun,
    FullStore,
    PutStep,
    RecordAttempt,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
)
from gateway.store.records import RunStatus
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.upstream.headers import client_response_headers
from step_protocol import wire

log = logging.getLogger("gateway.engine.driver")

LEASE_TTL = 30.0
"""Seconds a run's lease lasts unless renewed; another node may take the run after it."""
INLINE_BODY = 64 * 1024
"""A final body up to this size, with a declared length, is read whole, not streamed."""


class _QueueTimeout(Exception):
    """A new run's first attempt waited past its route's queue_timeout."""


@dataclass(slots=True)
class _Tried:
    """What one attempt came to: its outcome, the final response when it was kept, and
    the retry decision when it was taken already (before reading a response's body)."""

    outcome: AttemptOutcome
    stored: StoredResponse | None = None
    decision: Decision | None = None


class Driver:
    def __init__(
        self,
        *,
        store: FullStore,
        writer: Writer,
        pool: upstream.Pool,
        tokens: Tokens,
        sidecar_url: str,
        sync_steps: bool,
        limits: Limits,
    ) -> None:
        self.store = store
        self.writer = writer
        self.pool = pool
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
        self._watchers: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        """Result URLs long-polling a run that lives in the store; gone when they leave."""
        self.on_suspend: Callable[[], None] | None = None
        """Called after a suspension commits (the scheduler re-reads its next wake time)."""
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_urlsafe(6)}"
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
        """Drive a run taken from the store (recovered, due, retried) from its next attempt.

        A suspended run kept in memory for its waiters is the same LiveRun again, so
        a held client sees it finish; if its task is still settling its suspension, that
        task goes on instead of a second one.
        """
        live = self._live.get(run.run_id)
        if live is None:
            live = LiveRun(run)
            self._start(live, resumed=True)
            return live
        current = live.run
        current.merge_steps(run.steps)
        current.pending = run.pending
        current.status, current.wake_at = RunStatus.RUNNING, None
        if live.task is not None and not live.task.done():
            live.wake_requested = True
        else:
            live.task = spawn(self._drive(live, resumed=True), name=f"run-{run.run_id}")
        return live

    def watch(self, run_id: str) -> asyncio.Event:
        """An event set when a run now only in the store becomes live here (is resumed)."""
        event = self._watchers.get(run_id)
        if event is None:
            self._watchers[run_id] = event = asyncio.Event()
        return event

    def _start(self, live: LiveRun, *, resumed: bool) -> None:
        # WeakValueDictionary.pop is Python code: skip it in the usual case of no watcher.
        if self._watchers and (watcher := self._watchers.pop(live.run.run_id, None)) is not None:
            watcher.set()
        self._live[live.run.run_id] = live
        metrics.IN_FLIGHT.inc()
        live.task = spawn(self._drive(live, resumed=resumed), name=f"run-{live.run.run_id}")

    def attached(self, route: str, key: str) -> LiveRun | None:
        """The live run an idempotency key belongs to, if it is live here."""
        return self._idempotent.get((route, key))

    # --- steps (reported by the sidecar) ------------------------------------------

    def current(self, run_id: str, attempt: int) -> LiveRun:
        """The live run an attempt's token may write to: 404 unknown, 409 superseded."""
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
        return live

    def record_step(
        self, live: LiveRun, step_id: str, output: bytes
    ) -> tuple[StepResult, asyncio.Future[None] | None]:
        """Apply a step write to a live run; with the commit future when it was new."""
        run = live.run
        result = run.record_step(step_id, output)
        metrics.child(metrics.STEPS, result.value).inc()
        if result is not StepResult.CREATED:
            return result, None
        done = self.writer.submit(PutStep(run.run_id, step_id, output, run.attempt, time.time()))
        return result, done

    async def put_step(
        self, run_id: str, attempt: int, step_id: str, output: bytes, sync: bool
    ) -> StepResult:
        """Record a step for an attempt; answers once queued, or once committed when sync."""
        result, done = self.record_step(self.current(run_id, attempt), step_id, output)
        if done is not None and (sync or self.sync_steps):
            await done
        return result

    def wait_completed(self, run_id: str, step_id: str, output: bytes) -> None:
        """An event completed a wait in the store: mirror it in the live run, if any."""
        live = self._live.get(run_id)
        if live is None:
            return
        run = live.run
        run.pending.pop(step_id, None)
        run.merge_steps({step_id: output})

    def step_error(self, run_id: str, attempt: int, step_id: str, message: str) -> None:
        live = self._live.get(run_id)
        if live is None:
            raise NotFound("run is not running", run_id=run_id)
        if attempt != live.run.attempt:
            raise StaleAttempt(f"attempt {attempt} is superseded", run_id=run_id)
        live.run.step_errors.append((step_id, attempt, message[:2000]))
        metrics.child(metrics.STEPS, "error").inc()
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
                tried = await self._attempt_in_slot(live)
                outcome = tried.outcome
                if run.suspension is not None:
                    if not await self._suspend(live):
                        return  # the run lives in the store until it is due
                    await self._next_attempt(live)
                    continue
                if tried.stored is not None:
                    self._finish(live, tried.stored)
                    return
                decision = tried.decision
                if decision is None:
                    decision = decide(outcome, policy, run.attempt - run.suspends, self._rng)
                if decision.verdict is Verdict.FINAL:
                    if self._pauses(run, decision):
                        await self._pause(live, decision.reason)
                        return
                    self._finish(live, self._failure_response(run, outcome, decision.reason))
                    return
                metrics.child(metrics.RETRIES, run.route.name).inc()
                run.status = RunStatus.BACKOFF
                run.wake_at = time.time() + decision.delay
                log.info(
                    "attempt %d failed (%s); retry in %.3fs",
                    run.attempt,
                    outcome.detail or f"status {outcome.status}",
                    decision.delay,
                    extra={"run_id": run.run_id},
                )
                self.writer.post(
                    UpdateRun(run.run_id, RunStatus.BACKOFF, run.attempt, run.wake_at, time.time())
                )
                live.notify()
                await asyncio.sleep(decision.delay)
                await self._next_attempt(live)
        except _QueueTimeout as exc:
            problem = stored_problem(
                run.run_id,
                503,
                "queue-timeout",
                "Service unavailable",
                str(exc),
                attempts=run.attempt,
            )
            self._finish(live, problem)
        finally:
            if live.sink is not None and not live.run.finished:
                live.sink = None

    @staticmethod
    def _pauses(run: Run, decision: Decision) -> bool:
        return decision.exhausted and run.route.settings.on_exhausted == "pause"

    async def _pause(self, live: LiveRun, reason: str) -> None:
        """`on_exhausted: pause`: keep the run and its steps until an operator retries it."""
        run = live.run
        run.status, run.wake_at = RunStatus.PAUSED, None
        log.warning(
            "paused (%s): waiting for an operator's retry", reason, extra={"run_id": run.run_id}
        )
        live.notify()
        await self.writer.submit(
            UpdateRun(run.run_id, RunStatus.PAUSED, run.attempt, None, time.time())
        )
        if live.evictable:
            self.forget(run.run_id)

    async def _suspend(self, live: LiveRun) -> bool:
        """Park a run whose attempt asked to sleep or wait; True when it may go on at once.

        It goes on when the step it blocked on completed meanwhile (an event arrived) or
        its timer is already due; otherwise it is committed as `suspended`, with its
        earliest timer as wake time, and leaves memory unless a client waits on it here.
        """
        run = live.run
        blocked, run.suspension = run.suspension, None
        assert blocked is not None
        run.suspends += 1
        wake = run.next_wake()
        now = time.time()
        if blocked.step_id in run.steps or (wake is not None and wake <= now):
            return True
        run.status, run.wake_at = RunStatus.SUSPENDED, wake
        metrics.child(metrics.SUSPENSIONS, blocked.kind.value).inc()
        log.info(
            "suspended on %s %r until %s",
            blocked.kind.value,
            blocked.step_id,
            "an event" if wake is None else f"{wake - now:.3f}s from now",
            extra={"run_id": run.run_id},
        )
        live.wake_requested = False
        live.notify()
        await self.writer.submit(SuspendRun(run.run_id, run.attempt, wake, now))
        if self.on_suspend is not None:
            self.on_suspend()
        if await suspensions.missed_event(self, live):
            return True
        if live.wake_requested:  # due or woken while the suspension was committing
            return True
        if live.evictable:
            self.forget(run.run_id)
        return False

    def release(self, live: LiveRun) -> None:
        """A waiter leaves: a parked run nobody waits on lives in the store alone."""
        live.waiters -= 1
        parked = live.run.status in (RunStatus.SUSPENDED, RunStatus.PAUSED)
        if parked and live.evictable and live.task is not None and live.task.done():
            self.forget(live.run.run_id)

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

    async def _attempt_in_slot(self, live: LiveRun) -> _Tried:
        """One attempt inside the route's concurrency slot, counted and recorded."""
        run = live.run
        attempt = run.attempt
        started = time.time()
        live.in_attempt = True
        self._in_attempt += 1
        self._drained.clear()
        try:
            async with self._slot(run, wait_forever=attempt > 1):
                tried = await self._attempt(live, attempt)
        finally:
            live.in_attempt = False
            self._in_attempt -= 1
            if not self._in_attempt:
                self._drained.set()
        outcome = tried.outcome
        kind = "suspended" if run.suspension is not None else outcome.kind.value
        metrics.child(metrics.ATTEMPTS, run.route.name, kind).inc()
        self.writer.post(
            RecordAttempt(
                run.run_id,
                attempt,
                started,
                time.time(),
                kind,
                outcome.status,
                outcome.detail,
            )
        )
        return tried

    def _slot(self, run: Run, *, wait_forever: bool) -> AbstractAsyncContextManager[None]:
        """A place in the route's concurrency queue for one attempt; nothing to take (a
        `nullcontext`, cheaper than a generator-based manager) on a route without a limit.

        `queue_timeout` bounds only the first attempt's wait (the client is refused with
        a 503); a run that has started waits as long as it takes for its retries.
        """
        limiter = self.limits.concurrency.get(run.route.name)
        if limiter is None:
            return contextlib.nullcontext()
        return self._queued(limiter, run, wait_forever)

    @contextlib.asynccontextmanager
    async def _queued(
        self, limiter: ConcurrencyLimiter, run: Run, wait_forever: bool
    ) -> AsyncIterator[None]:
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

    async def _attempt(self, live: LiveRun, attempt: int) -> _Tried:
        """One attempt; a final response comes back stored (and streamed to a held client)."""
        run = live.run
        sent = time.perf_counter()
        outcome, resp = await attempts.send(
            self.pool, attempts.build_request(run, attempt, self.tokens, self.sidecar_url)
        )
        if resp is None:
            return _Tried(outcome)
        metrics.child(metrics.UPSTREAM_LATENCY, run.route.name).observe(time.perf_counter() - sent)
        try:
            if run.suspension is not None:
                return _Tried(outcome)  # an attempt that suspended: its response is ignored
            decision = decide(outcome, run.route.settings.retry, attempt - run.suspends, self._rng)
            if decision.verdict is Verdict.RETRY or self._pauses(run, decision):
                return _Tried(outcome, decision=decision)  # a retried body is not kept
            return await self._receive(live, resp, outcome)
        finally:
            resp.release()

    async def _receive(
        self, live: LiveRun, resp: upstream.Response, outcome: AttemptOutcome
    ) -> _Tried:
        """Read a final response, teeing it into the held client's feed as it arrives
        (never waiting for the client: a slow one is detached, see `Feed`).

        A short body of declared length is read whole instead, and the held client is
        answered from the finished run in one write: streaming it would cost three
        awaited writes for what fits in one packet.
        """
        headers = client_response_headers(resp.headers.items())
        headers.append((wire.RUN_ID, live.run.run_id))
        length = resp.content_length
        if length is not None and length <= INLINE_BODY and live.run.request.method != "HEAD":
            try:
                body = await resp.read()
            except (upstream.UpstreamError, TimeoutError) as exc:
                return _Tried(attempts.broken_body(exc))
            stored = StoredResponse(resp.status, headers, body)
            self._finish(live, stored)
            return _Tried(outcome, stored)
        sink, live.sink = live.sink, None
        if sink is not None:
            sink.start(resp.status, headers)
        chunks: list[bytes] = []
        whole = False
        try:
            async for chunk in resp.iter_chunks():
                chunks.append(chunk)
                if sink is not None and not sink.push(chunk):
                    sink = None  # detached: the attempt goes on at the upstream's pace
            whole = True
        except (upstream.UpstreamError, TimeoutError) as exc:
            return _Tried(attempts.broken_body(exc))
        finally:
            if sink is not None and not whole:
                sink.end(ok=False)  # broken off, or cancelled: the client's body is cut
        stored = StoredResponse(resp.status, headers, b"".join(chunks))
        if sink is not None:
            self._finish(live, stored)
            sink.end(ok=True)
        return _Tried(outcome, stored)

    def _failure_response(self, run: Run, outcome: AttemptOutcome, reason: str) -> StoredResponse:
        """The 502 a run ends with when no attempt produced a response."""
        detail = (
            f"upstream {run.route.upstream} gave no response: "
            f"{outcome.detail or outcome.kind.value}; {reason}"
        )
        return stored_problem(
            run.run_id,
            502,
            "upstream-failed",
            "Upstream failed",
            detail,
            attempts=run.attempt,
            outcome=outcome.kind.value,
        )

    def _finish(self, live: LiveRun, response: StoredResponse) -> None:
        run = live.run
        if run.finished:
            return
        run.response = response
        run.status = RunStatus.SUCCEEDED if response.status < 400 else RunStatus.FAILED
        run.wake_at = None
        metrics.child(metrics.RUNS, run.route.name, run.status.value).inc()
        committed = live.final_commit = self.writer.submit(
            FinishRun(run.run_id, run.status.value, response, time.time())
        )
        committed.add_done_callback(lambda _: self.forget(run.run_id))
        live.notify()

    def forget(self, run_id: str) -> None:
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
