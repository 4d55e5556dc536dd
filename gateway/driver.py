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
import weakref
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
from multidict import CIMultiDict

from gateway import attempts, metrics
from gateway.attempts import AttemptRequest
from gateway.config import RouteConfig
from gateway.errors import Conflict, NotFound, StaleAttempt, Unavailable
from gateway.headers import client_response_headers
from gateway.limits import Limits
from gateway.live import LiveRun
from gateway.problems import CONTENT_TYPE, problem_body
from gateway.retries import AttemptOutcome, Decision, Verdict, decide
from gateway.runs import FINAL_STATUSES, PendingKind, Run, RunStatus, StepResult
from gateway.store import (
    CancelRun,
    CreateRun,
    FinishRun,
    FullStore,
    PutStep,
    RecordAttempt,
    ResetRun,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
)
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.tokens import Tokens, new_run_id
from step_protocol import wire

log = logging.getLogger("gateway.driver")

LEASE_TTL = 30.0
"""Seconds a run's lease lasts unless renewed; another node may take the run after it."""


class _QueueTimeout(Exception):
    """A new run's first attempt waited past its route's queue_timeout."""


class Driver:
    def __init__(
        self,
        *,
        store: FullStore,
        writer: Writer,
        session: aiohttp.ClientSession,
        tokens: Tokens,
        sidecar_url: str,
        sync_steps: bool,
        limits: Limits,
    ) -> None:
        self.store = store
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
        self._watchers: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        """Result URLs long-polling a run that lives in the store; gone when they leave."""
        self.on_suspend: Callable[[], None] | None = None
        """Called after a suspension commits (the scheduler re-reads its next wake time)."""
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
        current.steps.update(run.steps)
        current.state_bytes = sum(len(v) for v in current.steps.values())
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
        if (watcher := self._watchers.pop(live.run.run_id, None)) is not None:
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
        metrics.STEPS.labels(result.value).inc()
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
        if step_id not in run.steps:
            run.steps[step_id] = output
            run.state_bytes += len(output)

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
                if run.suspension is not None:
                    if not await self._suspend(live):
                        return  # the run lives in the store until it is due
                    await self._next_attempt(live)
                    continue
                if stored is not None:
                    self._finish(live, stored)
                    return
                decision = decide(outcome, policy, run.attempt - run.suspends, self._rng)
                if decision.verdict is Verdict.FINAL:
                    if self._pauses(run, decision):
                        await self._pause(live, decision.reason)
                        return
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
            self._forget(run.run_id)

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
        metrics.SUSPENSIONS.labels(blocked.kind.value).inc()
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
        if await self._missed_event(live):
            return True
        if live.wake_requested:  # due or woken while the suspension was committing
            return True
        if live.evictable:
            self._forget(run.run_id)
        return False

    async def _missed_event(self, live: LiveRun) -> bool:
        """Complete a wait with an event that came while its run was still running.

        `POST /v1/events` only wakes runs already suspended in the store; an event that
        arrived between the wait's first call and the suspension's commit is found here.
        """
        run = live.run
        for pending in list(run.pending.values()):
            if pending.kind is not PendingKind.WAIT or pending.event is None:
                continue
            match = orjson.loads(pending.match) if pending.match else {}
            for row in await self.store.events_since(pending.event, pending.created_at):
                found = wire.event_output(row.event_id, row.name, orjson.loads(row.data), row.ts)
                if not wire.event_matches(match, found):
                    continue
                output = orjson.dumps(found, option=orjson.OPT_SORT_KEYS)
                if await self.store.complete_wait(run.run_id, pending.step_id, output, time.time()):
                    self.wait_completed(run.run_id, pending.step_id, output)
                    return True
        return False

    def release(self, live: LiveRun) -> None:
        """A waiter leaves: a suspended run nobody waits on lives in the store alone."""
        live.waiters -= 1
        if live.run.status is RunStatus.SUSPENDED and live.evictable and live.task is not None:
            if live.task.done():
                self._forget(live.run.run_id)

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
        kind = "suspended" if run.suspension is not None else outcome.kind.value
        metrics.ATTEMPTS.labels(run.route.name, kind).inc()
        self.writer.submit(
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
            if run.suspension is not None:
                return outcome, None  # an attempt that suspended: its response is ignored
            decision = decide(outcome, run.route.settings.retry, attempt - run.suspends, self._rng)
            if decision.verdict is Verdict.RETRY or self._pauses(run, decision):
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

    # --- operator actions (admin API) ------------------------------------------------

    async def cancel(self, run_id: str, row_status: str | None) -> None:
        """Cancel an unfinished run: its result becomes a 409 problem, its timers go.

        `row_status` is the store's status when the run is not live here.
        """
        live = self._live.get(run_id)
        status = live.run.status.value if live is not None else row_status
        if status is None:
            raise NotFound("no such run", run_id=run_id)
        if status in FINAL_STATUSES:
            raise Conflict(f"the run is already {status}", run_id=run_id)
        response = self._cancelled_response(run_id)
        now = time.time()
        if live is not None:
            if live.task is not None and not live.task.done():
                live.task.cancel()
            run = live.run
            run.status, run.response, run.wake_at = RunStatus.CANCELLED, response, None
            run.pending.clear()
            live.final_commit = self.writer.submit(CancelRun(run_id, response, now))
            live.final_commit.add_done_callback(lambda _: self._forget(run_id))
            live.notify()
            await asyncio.shield(live.final_commit)
        else:
            await self.writer.submit(CancelRun(run_id, response, now))
        metrics.RUNS.labels(self._route_name(live), RunStatus.CANCELLED.value).inc()
        log.info("cancelled by an operator", extra={"run_id": run_id})

    async def retry(self, run: Run) -> None:
        """Run a failed or cancelled run again from its completed steps (a new attempt)."""
        live = self._live.get(run.run_id)
        if live is not None and not live.run.finished and live.run.status is not RunStatus.PAUSED:
            raise Conflict(f"the run is {live.run.status.value}, not failed", run_id=run.run_id)
        if live is not None:
            self._forget(run.run_id)
        await self.writer.submit(ResetRun(run.run_id, run.attempt, time.time()))
        run.status, run.response = RunStatus.RUNNING, None
        self.adopt(run)
        log.info("retried by an operator", extra={"run_id": run.run_id})

    def _cancelled_response(self, run_id: str) -> StoredResponse:
        body = problem_body(
            409, "run-cancelled", "Run cancelled", "an operator cancelled this run", run_id
        )
        return StoredResponse(409, [("Content-Type", CONTENT_TYPE), (wire.RUN_ID, run_id)], body)

    @staticmethod
    def _route_name(live: LiveRun | None) -> str:
        return live.run.route.name if live is not None else "unknown"

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
