"""The single owner of live runs: runs each run's attempts, applies step writes, wakes waiters.

Everything that changes a run goes through here; other modules report to it. A run is
driven by a task owned by the driver, never by the ingress handler, so a client that
disconnects cancels nothing. Writes are queued on the writer; only `sync` ones are awaited.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import secrets
import socket
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway import metrics, upstream
from gateway.config import RouteConfig
from gateway.engine import attempts, suspensions, waits
from gateway.engine.leases import LEASE_TTL
from gateway.engine.limits import ConcurrencyLimiter, Limits
from gateway.engine.live import LiveRun
from gateway.engine.retries import AttemptOutcome, Decision, Verdict, decide
from gateway.engine.runs import Pending, PendingKind, Run, StepResult, stored_problem
from gateway.engine.suspensions import Answer
from gateway.engine.tokens import Tokens, new_run_id
from gateway.errors import TYPE_BASE, Conflict, NotFound, StaleAttempt, Unavailable
from gateway.store import (
    FINAL_STATUSES,
    AddedEvent,
    CancelRun,
    CreateRun,
    DropPending,
    FinishRun,
    FullStore,
    IdempotencyKey,
    PutPending,
    PutStep,
    RecordAttempt,
    ResetRun,
    RunRow,
    StoredRequest,
    StoredResponse,
    SuspendRun,
    UpdateRun,
    Write,
)
from gateway.store.records import MAX_ERROR_MESSAGE, RecordStepError, RunStatus
from gateway.store.writer import Writer
from gateway.tasks import spawn
from gateway.upstream.headers import client_response_headers
from step_protocol import wire

log = logging.getLogger("gateway.engine.driver")

INLINE_BODY = 64 * 1024
"""A final body up to this size, with a declared length, is read whole, not streamed."""


_RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED})


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
        routes: Iterable[RouteConfig] = (),
    ) -> None:
        self.store = store
        self.writer = writer
        self.pool = pool
        self.tokens = tokens
        self.sidecar_url = sidecar_url.rstrip("/")
        self.sync_steps = sync_steps
        self.limits = limits
        self.routes = {route.name: route for route in routes}
        """Durable routes by name: a run from the store is driven under its route's
        current settings."""
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
        self.timers_changed = asyncio.Event()
        """Set when a suspension commits or an event wakes a run: the scheduler, which
        waits on it, re-reads its next wake time."""
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_urlsafe(6)}"
        """Owner name of this process's leases."""

    def get(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    def admit(
        self,
        route: RouteConfig,
        request: StoredRequest,
        *,
        limit_key: str = "",
        idempotency: IdempotencyKey | None = None,
    ) -> LiveRun:
        """Create a run, queue its record, and start driving it; never waits on storage.

        An Idempotency-Key is stored with the run in one transaction, and indexed here
        so a concurrent duplicate attaches at once.
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
            live.idempotency = idempotency
            self._idempotent[route.name, idempotency.key] = live
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

    async def resume(self, row: RunRow) -> LiveRun | None:
        """Drive a run taken from the store (recovered or due) from its next attempt, with
        its steps, pending sleeps and waits, and suspensions; None when its route is gone."""
        run = await self._load(row)
        return None if run is None else self.adopt(run)

    async def _load(self, row: RunRow) -> Run | None:
        """The one way a run is rebuilt from its row and what else the store keeps of it."""
        route = self.routes.get(row.route)
        if route is None or not route.durable:
            log.warning(
                "run of route %r not resumed: the route is no longer configured",
                row.route,
                extra={"run_id": row.run_id},
            )
            return None
        steps = await self.store.load_steps(row.run_id)
        pending = {
            p.step_id: Pending(
                p.step_id, PendingKind(p.kind), p.wake_at, p.event, p.match, p.created_at
            )
            for p in await self.store.list_pending(row.run_id)
        }
        return Run(
            row.run_id,
            route,
            row.request,
            row.created_at,
            attempt=row.attempt,
            status=RunStatus(row.status),
            wake_at=row.wake_at,
            steps=steps,
            pending=pending,
            suspends=await self.store.count_suspends(row.run_id),
        )

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

    async def post_event(self, event_id: str, name: str, data: bytes, now: float) -> AddedEvent:
        """An event arrived: store it, complete the waits it matches, wake their runs."""
        added = await waits.deliver(self.store, self.writer, event_id, name, data, now)
        for done in added.completed:
            self.wait_completed(done.run_id, done.step_id, done.output)
        if added.completed:
            self.timers_changed.set()
        return added

    def wait_completed(self, run_id: str, step_id: str, output: bytes) -> None:
        """An event completed a wait in the store: mirror it in the live run, if any."""
        live = self._live.get(run_id)
        if live is None:
            return
        run = live.run
        run.pending.pop(step_id, None)
        run.merge_steps({step_id: output})

    # --- sleeps and waits (reported by the sidecar) -----------------------------------

    def sleep(self, run_id: str, attempt: int, step_id: str, wake_at: float, now: float) -> Answer:
        """A durable sleep's call: done once its (first call's) wake time has come."""
        live = self.current(run_id, attempt)
        return self._apply(live, suspensions.sleep(live.run, step_id, wake_at, now))

    async def wait(
        self,
        run_id: str,
        attempt: int,
        step_id: str,
        *,
        event: str,
        match: Mapping[str, Any],
        timeout_in: float | None,
        lookback: float | None,
        now: float,
    ) -> Answer:
        """A wait-for-event's call: done once a matching event came, or its timeout."""
        live = self.current(run_id, attempt)
        found = None
        if lookback is not None and suspensions.looks_back(live.run, step_id, lookback):
            rows = await self.store.events_since(event, now - lookback)
            found = suspensions.first_match(match, suspensions.stored_events(rows))
            live = self.current(run_id, attempt)  # still ours after the read?
        plan = suspensions.wait(
            live.run,
            step_id,
            event=event,
            match=match,
            timeout_in=timeout_in,
            now=now,
            looked_back=found,
        )
        return self._apply(live, plan)

    def _apply(self, live: LiveRun, plan: suspensions.Plan) -> Answer:
        run = live.run
        step_id = plan.step_id
        if (fix := plan.fix) is not None:
            run.pending[step_id] = fix
            self.writer.post(
                PutPending(
                    run.run_id,
                    step_id,
                    fix.kind.value,
                    fix.wake_at,
                    fix.event,
                    fix.match,
                    fix.created_at,
                )
            )
        if plan.complete is not None:
            run.pending.pop(step_id, None)
            self.record_step(live, step_id, plan.complete)
            self.writer.post(DropPending(run.run_id, step_id))
        if plan.suspend is not None:
            run.suspension = plan.suspend
        return plan.answer

    def step_error(self, run_id: str, attempt: int, step_id: str, message: str) -> None:
        """Record a failed try of a step; answers once queued (the store bounds them)."""
        self.current(run_id, attempt)
        message = message[:MAX_ERROR_MESSAGE]
        self.writer.post(RecordStepError(run_id, step_id, attempt, message, time.time()))
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
                if run.finished:  # in the attempt, or failed meanwhile (see store_refused)
                    return
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
        self.timers_changed.set()
        found = await waits.missed(self.store, run, time.time())
        if found is not None:
            self.wait_completed(run.run_id, *found)
            return True
        if live.wake_requested:  # due or woken while the suspension was committing
            return True
        if live.evictable:
            self.forget(run.run_id)
        return False

    def hold(self, live: LiveRun) -> None:
        """A handler waits on a live run (a held client, a result URL): it stays in memory
        until the handler calls `release`."""
        live.waiters += 1

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
        limiter = self.limits.concurrency.get(run.route.name)
        try:
            if limiter is not None:
                await self._queue(limiter, run, first=attempt == 1)
            try:
                tried = await self._attempt(live, attempt)
            finally:
                if limiter is not None:
                    limiter.release(run.limit_key)
        finally:
            live.in_attempt = False
            self._in_attempt -= 1
            if not self._in_attempt:
                self._drained.set()
        outcome = tried.outcome
        kind = "suspended" if run.suspension is not None else outcome.kind.value
        metrics.child(metrics.ATTEMPTS, run.route.name, kind).inc()
        if _never_stored(live):
            return tried  # its attempts must not be stored either
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

    @staticmethod
    async def _queue(limiter: ConcurrencyLimiter, run: Run, *, first: bool) -> None:
        """A place in the route's concurrency queue for one attempt.

        `queue_timeout` bounds only the first attempt's wait (the client is refused with
        a 503); a run that has started keeps its place in line as long as it takes.
        """
        try:
            await limiter.acquire(run.limit_key, wait_forever=not first)
        except Unavailable as exc:
            raise _QueueTimeout(str(exc)) from None

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
        live.final_commit = asyncio.get_running_loop().create_future()
        self._store_final(live)
        live.notify()

    def _store_final(self, live: LiveRun) -> None:
        """Queue the run's final response. `live.final_commit` resolves once the response
        the run holds is committed, and the run leaves memory then: a problem that
        replaced a refused response (`store_refused`) is what waiters get, not an error.
        """
        run = live.run
        assert run.response is not None
        committed = self.writer.submit(
            FinishRun(run.run_id, run.status.value, run.response, time.time())
        )
        committed.add_done_callback(functools.partial(self._final_settled, live, run.response))

    def _final_settled(
        self, live: LiveRun, response: StoredResponse, committed: asyncio.Future[None]
    ) -> None:
        run = live.run
        if run.response is not response:
            return  # replaced meanwhile: the replacement's commit settles the run
        final = live.final_commit
        if final is not None and not final.done():
            if committed.cancelled():
                final.cancel()
            elif (exc := committed.exception()) is not None:
                final.set_exception(exc)  # even the problem was refused: waiters answer 500
                final.exception()
            else:
                final.set_result(None)
        if self._live.get(run.run_id) is live:
            self.forget(run.run_id)

    def forget(self, run_id: str) -> None:
        """Drop a finished run from memory once the store has it."""
        live = self._live.pop(run_id, None)
        if live is not None:
            metrics.IN_FLIGHT.dec()
            if live.idempotency is not None:
                self._idempotent.pop((live.run.route.name, live.idempotency.key), None)

    # --- operators' actions (the admin API) --------------------------------------------

    async def cancel(self, run_id: str) -> None:
        """Cancel an unfinished run: its result becomes a 409 problem, its timers and
        waits go. A live run's task is cancelled first, so no attempt outlives it."""
        live = self._live.get(run_id)
        if live is None:
            row = await self.store.get_run(run_id)
            live = self._live.get(run_id)  # it may have become live during the read
            if live is None:
                if row is None:
                    raise NotFound("no such run", run_id=run_id)
                status, route = row.status, row.route
        if live is not None:
            status, route = live.run.status.value, live.run.route.name
        if status in FINAL_STATUSES:
            raise Conflict(f"the run is already {status}", run_id=run_id)
        response = stored_problem(
            run_id, 409, "run-cancelled", "Run cancelled", "an operator cancelled this run"
        )
        committed = self.writer.submit(CancelRun(run_id, response, time.time()))
        if live is not None:
            if live.task is not None and not live.task.done():
                live.task.cancel()
            run = live.run
            run.status, run.response, run.wake_at = RunStatus.CANCELLED, response, None
            run.pending.clear()
            live.final_commit = committed
            committed.add_done_callback(lambda _: self.forget(run_id))
            live.notify()
        await asyncio.shield(committed)
        metrics.child(metrics.RUNS, route, RunStatus.CANCELLED.value).inc()
        log.info("cancelled by an operator", extra={"run_id": run_id})

    async def retry(self, run_id: str) -> None:
        """Run a failed, cancelled or paused run again from its completed steps, as a new
        attempt under this process's lease."""
        row = await self.store.get_run(run_id)
        live = self._live.get(run_id)
        if row is None:
            raise NotFound("no such run", run_id=run_id)
        status = live.run.status.value if live is not None else row.status
        if status not in _RETRYABLE:
            raise Conflict(
                f"only a failed, cancelled or paused run can be retried; this one is {status}",
                run_id=run_id,
            )
        run = await self._load(row)
        if run is None:
            raise Conflict(f"route {row.route!r} is no longer configured", run_id=run_id)
        if live is not None:
            self.forget(run_id)
        now = time.time()
        await self.writer.submit(ResetRun(run_id, run.attempt, now, self.node_id, now + LEASE_TTL))
        run.status, run.response, run.wake_at = RunStatus.RUNNING, None, None
        self.adopt(run)
        log.info("retried by an operator", extra={"run_id": run_id})

    # --- writes the store refused for good ----------------------------------------------

    def store_refused(self, write: Write, message: str) -> None:
        """`Writer.on_rejected`: a write of a live run can never be stored, so the run
        fails with a 500 problem stored as its result, never to run again. The hook runs
        before the write's future fails, so waiters find the problem in place.

        A refused response is replaced; a run whose creation was refused fails for the
        clients holding it and leaves, with nothing stored; any other refused write fails
        the run unless it has its final response already. Runs not live here are left
        as the store has them.
        """
        live = self._live.get(write.run_id)
        if live is None:
            return
        run = live.run
        if isinstance(write, FinishRun) and write.response is not run.response:
            return  # a response replaced already
        problem = stored_problem(
            run.run_id,
            500,
            _NOT_STORED_TYPE,
            "Result not stored",
            f"the store refused {_described(write)}: {message}",
            attempts=run.attempt,
        )
        if isinstance(write, CreateRun):
            run.status, run.response, run.wake_at = RunStatus.FAILED, problem, None
            if live.final_commit is not None and not live.final_commit.done():
                live.final_commit.set_result(None)  # nothing to wait for: nothing is stored
            self._stop(live)
            live.notify()
            self.forget(run.run_id)
        elif isinstance(write, FinishRun):
            if write.response.body.startswith(_NOT_STORED):
                return  # the problem itself was refused: `_final_settled` gives up
            run.status, run.response = RunStatus.FAILED, problem
            self._store_final(live)
            live.notify()
        elif not run.finished:
            self._finish(live, problem)
            self._stop(live)

    @staticmethod
    def _stop(live: LiveRun) -> None:
        """End a failed run's task, unless it is in an attempt (which may be streaming
        into a held client): `_drive` then returns once the attempt ends."""
        task = live.task
        if task is not None and not task.done() and not live.in_attempt:
            task.cancel()

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


_NOT_STORED_TYPE: Final = "result-not-stored"
_NOT_STORED: Final = orjson.dumps({"type": TYPE_BASE + _NOT_STORED_TYPE})[:-1]
"""How the body of such a problem begins (`problem_body` puts `type` first)."""


def _described(write: Write) -> str:
    """What a refused write held, for the problem's detail."""
    if isinstance(write, FinishRun):
        response = write.response
        return f"the final response (status {response.status}, {len(response.body)} bytes)"
    if isinstance(write, CreateRun):
        return f"the request ({len(write.request.body)} bytes of body)"
    if isinstance(write, PutStep):
        return f"the output of step {write.step_id!r} ({len(write.output)} bytes)"
    return f"a {type(write).__name__} record"


def _never_stored(live: LiveRun) -> bool:
    """The store refused the run's creation: nothing of it may be stored after."""
    created = live.created
    return (
        created is not None
        and created.done()
        and not created.cancelled()
        and created.exception() is not None
    )
