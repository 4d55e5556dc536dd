// Example backend in Node.js 20, standard library only: the step protocol with raw calls.
//
// It implements step_protocol/SPEC.md (protocol version 2) without any SDK, so it
// doubles as documentation for writing a backend in a language we ship no client for.
// It never keeps state beyond its in-process step counters.
//
//   node examples/node_backend.mjs --port 3001 [--host 127.0.0.1] [--steps-sync]
//
// Endpoints and failure knobs are those of examples/backend.py:
//   GET|POST /demo/steps?n=3[&fail_at=K&fail_times=F&mode=500|503|drop|hang|400|noretry
//                          &retry_after=S&raise_at=K&work_ms=W&delay_ms=D]
//   GET|POST /demo/sleep?seconds=N&n=2          step-1, durable sleep "nap", step-2..n
//   GET|POST /demo/wait?event=order.paid&order_id=42[&timeout=30][&lookback=10m]
//                                                step-1, wait "paid" for the event, step-2
//   GET /demo/stream?chunks=5&interval_ms=100
//   *   /demo/echo
//   GET /_counts[?run_id=]    GET /_health
//
// While a sleep or wait is not over, the handler ends at once with
// 202 {"suspended": true, "kind", "wake_at", "step_id"}: the gateway ignores that answer and
// calls the handler again later. Without the gateway, /demo/sleep sleeps in-process and
// /demo/wait answers 501 (nothing could deliver an event).

import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

// ---------------------------------------------------------------------------------------
// The protocol (SPEC.md §2-§5)
// ---------------------------------------------------------------------------------------

/**
 * Read the Durable-* headers of one attempt. Node lowercases header names for us.
 * Returns null when the request did not come through the gateway: steps then just run.
 */
function durableContext(headers) {
  const runId = headers["durable-run-id"];
  const sidecar = headers["durable-sidecar"];
  const token = headers["durable-token"];
  if (!runId && !sidecar && !token) return null;
  if (!runId || !sidecar || !token) throw new Error("incomplete Durable-* headers");
  return {
    runId,
    attempt: Number.parseInt(headers["durable-attempt"] ?? "1", 10),
    sidecar: sidecar.replace(/\/+$/, ""), // base URL; we append /steps/...
    token,
    // Completed steps {step_id: output}; null means "ask the sidecar" (value `fetch`).
    steps: decodeSteps(headers["durable-steps"]),
    uses: new Map(), // how often each base step id was used in this attempt (for id:1, id:2)
  };
}

/**
 * Durable-Steps (SPEC.md §3): absent = nothing done yet; `fetch` = too big for a header,
 * GET {sidecar}/steps; else base64url (RFC 4648 §5, padding optional) of a JSON object.
 */
function decodeSteps(value) {
  if (!value) return {};
  value = value.trim();
  if (value === "fetch") return null;
  // Node's "base64url" decoder accepts the value with or without "=" padding.
  const steps = JSON.parse(Buffer.from(value, "base64url").toString("utf8"));
  if (steps === null || typeof steps !== "object" || Array.isArray(steps)) {
    throw new Error("Durable-Steps must encode a JSON object");
  }
  return steps;
}

/** A step id in a URL is one path segment: percent-encode everything but unreserved chars. */
function stepPath(stepId) {
  // encodeURIComponent leaves !'()* alone; SPEC.md asks for those encoded too.
  return encodeURIComponent(stepId).replace(
    /[!'()*]/g,
    (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase(),
  );
}

/**
 * One call to the sidecar. Node's global fetch keeps connections alive by default, so
 * consecutive steps reuse one TCP connection to the gateway.
 */
async function sidecar(ctx, method, path, body) {
  const headers = { authorization: `Bearer ${ctx.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(ctx.sidecar + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = { detail: text };
  }
  return { status: res.status, json };
}

/** Problem `type` URIs end in a slug (SPEC.md §6): compare the last path segment. */
const problemSlug = (problem) => String(problem?.type ?? "").split("/").pop();

class StaleAttempt extends Error {}

/**
 * Thrown when the sidecar answers 202 to a sleep or wait: the run must suspend. The request
 * handler catches it and ends at once (SPEC.md §4.7, "Suspension"); the gateway ignores
 * whatever the suspended attempt answers and re-invokes the request later.
 */
class Suspend extends Error {
  constructor(kind, stepId, wakeAt) {
    super(`${kind} ${stepId} suspends the run until ${wakeAt ?? "a matching event"}`);
    Object.assign(this, { kind, stepId, wakeAt });
  }
}

/** The next id for `baseId` in this attempt: id, id:1, id:2, ... (steps, sleeps, waits alike). */
function nextId(ctx, baseId) {
  const n = ctx.uses.get(baseId) ?? 0;
  ctx.uses.set(baseId, n + 1);
  return n === 0 ? baseId : `${baseId}:${n}`;
}

/** Completed steps {id: output}: from Durable-Steps, or one GET when it said `fetch`. */
async function completedSteps(ctx) {
  if (ctx.steps === null) {
    const { status, json } = await sidecar(ctx, "GET", "/steps");
    if (status !== 200) throw new Error(`GET steps answered ${status}`);
    ctx.steps = Object.fromEntries(
      Object.entries(json.steps).map(([id, step]) => [id, step.output]),
    );
  }
  return ctx.steps;
}

/** A refusal of the sidecar as an exception: stale attempt, or anything else. */
function refusal(status, json) {
  if (status === 409 && problemSlug(json) === "stale-attempt") {
    return new StaleAttempt("a newer attempt of this run has started");
  }
  return new Error(`sidecar answered ${status}: ${json?.detail ?? ""}`);
}

/**
 * When a try of a step's work began and how long it has run, for its PUT (SPEC.md §4.3):
 * the start from the wall clock, the duration from the monotonic one.
 */
function stopwatch() {
  const startedAt = Date.now() / 1000; // Unix seconds
  const start = performance.now();
  return () => ({
    started_at: startedAt,
    duration_ms: Math.round((performance.now() - start) * 1000) / 1000,
  });
}

/**
 * Run `fn` as the step `baseId`, or hand back its output if an earlier attempt finished it.
 * Repeated ids in one attempt become id, id:1, id:2, ... (SPEC.md §4, "Repeated ids").
 * Both the output and a failed try are sent with the work's timing.
 */
async function step(ctx, baseId, fn, { sync = false } = {}) {
  if (ctx === null) return await fn(); // not behind the gateway: just run it

  const stepId = nextId(ctx, baseId);
  // Durable-Steps said `fetch`: one GET for all completed steps, on first need.
  const done = await completedSteps(ctx);
  if (Object.hasOwn(done, stepId)) return done[stepId]; // memoized: skip the work

  const path = `/steps/${stepPath(stepId)}`;
  const timing = stopwatch();
  let output;
  try {
    output = await fn();
  } catch (err) {
    // Record the failed try for tracing; best effort, never masks the real error.
    const error = { message: String(err?.message ?? err) };
    await sidecar(ctx, "PUT", path, { error, ...timing() }).catch(() => {});
    throw err;
  }

  // `?durable=sync`: answered only once the gateway has committed the step.
  const { status, json } = await sidecar(ctx, "PUT", sync ? `${path}?durable=sync` : path, {
    output,
    ...timing(),
  });
  if (status === 200 || status === 201) return output; // recorded (201) or already identical (200)
  if (status === 409 && problemSlug(json) !== "stale-attempt") {
    // step-conflict: another attempt recorded a different output first; first write wins.
    const stored = await sidecar(ctx, "GET", path);
    if (stored.status !== 200) throw new Error(`GET step answered ${stored.status}`);
    return stored.json.output;
  }
  throw refusal(status, json);
}

/**
 * Durable sleep (SPEC.md §4.5). A sleep is a step: once over, it is in Durable-Steps and
 * needs no call. Otherwise POST it: 200 = over, go on; 202 = not yet: throw Suspend so the
 * handler ends now. The first call fixes the wake time; later calls only ask.
 */
async function durableSleep(ctx, baseId, seconds) {
  if (ctx === null) return await sleep(seconds * 1000); // not behind the gateway: just sleep
  const stepId = nextId(ctx, baseId);
  if (Object.hasOwn(await completedSteps(ctx), stepId)) return; // over on an earlier attempt
  const { status, json } = await sidecar(ctx, "POST", `/steps/${stepPath(stepId)}/sleep`, {
    seconds,
  });
  if (status === 200) return; // {"done": true, "wake_at": ...}: the sleep is over
  if (status === 202) throw new Suspend("sleep", stepId, json?.wake_at ?? null);
  throw refusal(status, json);
}

/**
 * Wait for an event (SPEC.md §4.6): the event object {name, id, data, ts}, or null when the
 * timeout passed first. Memoized like any step (a timed-out wait is stored as null, so test
 * with hasOwn, not truthiness). 202 = nothing yet: throw Suspend; the gateway re-invokes the
 * request when a matching event arrives or the timeout passes.
 */
async function waitForEvent(ctx, baseId, event, { match, timeout, lookback } = {}) {
  if (ctx === null) throw new NoGateway("cannot wait for events without the gateway");
  const stepId = nextId(ctx, baseId);
  const done = await completedSteps(ctx);
  if (Object.hasOwn(done, stepId)) return done[stepId];
  const body = { event };
  if (match !== undefined) body.match = match;
  if (timeout !== undefined) body.timeout = timeout;
  if (lookback !== undefined) body.lookback = lookback;
  const { status, json } = await sidecar(ctx, "POST", `/steps/${stepPath(stepId)}/wait`, body);
  if (status === 200) return json.event; // the event, or null on timeout
  if (status === 202) throw new Suspend("wait", stepId, json?.timeout_at ?? null);
  throw refusal(status, json);
}

class NoGateway extends Error {}

// ---------------------------------------------------------------------------------------
// The demo endpoints
// ---------------------------------------------------------------------------------------

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "3001" },
    "steps-sync": { type: "boolean", default: false },
  },
});
const MODES = ["500", "503", "drop", "hang", "400", "noretry"];
const counts = new Map(); // run id -> Map(step id -> executions)

function sendJson(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

function intParam(query, name, fallback) {
  const raw = query.get(name);
  if (raw === null) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new RangeError(`${name} must be an integer >= 0`);
  return value;
}

class StepFailed extends Error {} // what raise_at makes a step's work throw

async function demoSteps(req, res, query) {
  let n, failAt, failTimes, retryAfter, raiseAt, workMs, delayMs, mode;
  try {
    n = intParam(query, "n", 3);
    failAt = intParam(query, "fail_at", 0);
    failTimes = intParam(query, "fail_times", 1);
    retryAfter = intParam(query, "retry_after", 1);
    raiseAt = intParam(query, "raise_at", 0);
    workMs = intParam(query, "work_ms", 0);
    delayMs = intParam(query, "delay_ms", 0);
    mode = query.get("mode") ?? "500";
    if (!MODES.includes(mode)) throw new RangeError(`mode must be one of ${MODES.join(", ")}`);
  } catch (err) {
    return sendJson(res, 400, { error: err.message });
  }

  const ctx = durableContext(req.headers);
  const attempt = ctx?.attempt ?? 1;
  const runKey = ctx?.runId ?? "none";
  if (!counts.has(runKey)) counts.set(runKey, new Map());
  const runCounts = counts.get(runKey);

  const results = [];
  for (let i = 1; i <= n + 1; i++) {
    if (i === failAt && attempt <= failTimes) return fail(req, res, mode, attempt, retryAfter);
    if (i > n) break;
    const stepId = `step-${i}`;
    const work = async () => {
      runCounts.set(stepId, (runCounts.get(stepId) ?? 0) + 1);
      if (workMs) await sleep(workMs);
      if (i === raiseAt && attempt <= failTimes) {
        throw new StepFailed(`${stepId} failed on attempt ${attempt}`);
      }
      return { step: i, value: `computed on attempt ${attempt}` };
    };
    try {
      results.push(await step(ctx, stepId, work, { sync: args["steps-sync"] }));
    } catch (err) {
      if (!(err instanceof StepFailed)) throw err;
      return sendJson(res, 500, { error: err.message, attempt }); // the try is recorded already
    }
  }
  if (delayMs) await sleep(delayMs);
  sendJson(res, 200, { run_id: ctx?.runId ?? null, attempt, results });
}

/** A duration query parameter: a number of seconds, or a string like 30s passed on as is. */
function durationParam(query, name) {
  const raw = query.get(name);
  if (raw === null) return undefined;
  if (/^(\d+(\.\d*)?|\.\d+)$/.test(raw)) return Number(raw);
  if (/^((\d+(\.\d*)?|\.\d+)(ms|s|m|h|d))+$/.test(raw)) return raw;
  throw new RangeError(`${name} must be seconds or a duration like 30s`);
}

function countedStep(ctx, i) {
  const runKey = ctx?.runId ?? "none";
  if (!counts.has(runKey)) counts.set(runKey, new Map());
  const runCounts = counts.get(runKey);
  return () => {
    runCounts.set(`step-${i}`, (runCounts.get(`step-${i}`) ?? 0) + 1);
    return { step: i, value: `computed on attempt ${ctx?.attempt ?? 1}` };
  };
}

/**
 * The suspension pattern: a sleep or wait that is not over throws Suspend; end the handler
 * at once with any answer (the gateway ignores it: the run is suspended, and the request is
 * sent again after the wake time or when the event arrives). Returns true when it answered.
 */
function answerSuspend(res, err) {
  if (!(err instanceof Suspend)) return false;
  sendJson(res, 202, {
    suspended: true,
    kind: err.kind,
    wake_at: err.wakeAt,
    step_id: err.stepId,
  });
  return true;
}

async function demoSleep(req, res, query) {
  let seconds, n;
  try {
    seconds = durationParam(query, "seconds") ?? 1;
    if (typeof seconds !== "number") throw new RangeError("seconds must be a number");
    n = intParam(query, "n", 2);
    if (n < 1) throw new RangeError("n must be >= 1");
  } catch (err) {
    return sendJson(res, 400, { error: err.message });
  }
  const ctx = durableContext(req.headers);
  const results = [];
  try {
    results.push(await step(ctx, "step-1", countedStep(ctx, 1)));
    await durableSleep(ctx, "nap", seconds); // throws Suspend while the nap lasts
    for (let i = 2; i <= n; i++) results.push(await step(ctx, `step-${i}`, countedStep(ctx, i)));
  } catch (err) {
    if (answerSuspend(res, err)) return; // 202: end the handler now, do nothing more
    throw err;
  }
  sendJson(res, 200, { run_id: ctx?.runId ?? null, attempt: ctx?.attempt ?? 1, results });
}

async function demoWait(req, res, query) {
  let timeout, lookback;
  try {
    timeout = durationParam(query, "timeout"); // absent: wait forever
    lookback = durationParam(query, "lookback");
  } catch (err) {
    return sendJson(res, 400, { error: err.message });
  }
  const event = query.get("event") ?? "order.paid";
  const orderId = query.get("order_id");
  const match = orderId === null ? undefined : { "data.order_id": orderId };
  const ctx = durableContext(req.headers);
  const results = [];
  let ev;
  try {
    results.push(await step(ctx, "step-1", countedStep(ctx, 1)));
    ev = await waitForEvent(ctx, "paid", event, { match, timeout, lookback }); // may Suspend
    const work = countedStep(ctx, 2);
    results.push(await step(ctx, "step-2", () => ({ ...work(), event: ev })));
  } catch (err) {
    if (answerSuspend(res, err)) return; // 202: end the handler now, do nothing more
    if (err instanceof NoGateway) return sendJson(res, 501, { error: err.message });
    throw err;
  }
  const [runId, attempt] = [ctx?.runId ?? null, ctx?.attempt ?? 1];
  sendJson(res, 200, { run_id: runId, attempt, event: ev, results });
}

async function fail(req, res, mode, attempt, retryAfter) {
  const body = { error: `injected failure (${mode})`, attempt };
  switch (mode) {
    case "503": // retriable, with a backoff hint the gateway honours
      return sendJson(res, 503, body, { "retry-after": String(retryAfter) });
    case "400": // 4xx is final: no retry
      return sendJson(res, 400, body);
    case "noretry": // a 5xx made final by Durable-Retry: no
      return sendJson(res, 500, body, { "durable-retry": "no" });
    case "drop": // the connection closes without a response
      return req.socket.destroy();
    case "hang": // longer than any attempt timeout
      await sleep(3_600_000);
      return sendJson(res, 500, body);
    default:
      return sendJson(res, 500, body);
  }
}

async function demoStream(req, res, query) {
  let chunks, intervalMs;
  try {
    chunks = intParam(query, "chunks", 5);
    intervalMs = intParam(query, "interval_ms", 100);
  } catch (err) {
    return sendJson(res, 400, { error: err.message });
  }
  res.writeHead(200, { "content-type": "text/plain; charset=utf-8" }); // chunked by default
  for (let i = 1; i <= chunks; i++) {
    if (i > 1) await sleep(intervalMs);
    res.write(`chunk ${i}\n`);
  }
  res.end();
}

function demoEcho(req, res, url, body) {
  // Names lowercased and repeats joined with ", ", like the Python backend (rawHeaders,
  // because req.headers would keep only the first of some repeated headers).
  const headers = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const [name, value] = [req.rawHeaders[i].toLowerCase(), req.rawHeaders[i + 1]];
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  sendJson(res, 200, {
    method: req.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    headers,
    body,
  });
}

function showCounts(res, query) {
  const asObject = (m) => Object.fromEntries(m ?? new Map());
  const runId = query.get("run_id");
  if (runId !== null) return sendJson(res, 200, { counts: asObject(counts.get(runId)) });
  const all = {};
  for (const [run, steps] of counts) all[run] = asObject(steps);
  sendJson(res, 200, all);
}

async function readBody(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return Buffer.concat(parts).toString("utf8");
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://backend");
    const body = await readBody(req);
    const route = `${req.method} ${url.pathname}`;
    if (route === "GET /demo/steps" || route === "POST /demo/steps") {
      await demoSteps(req, res, url.searchParams);
    } else if (route === "GET /demo/sleep" || route === "POST /demo/sleep") {
      await demoSleep(req, res, url.searchParams);
    } else if (route === "GET /demo/wait" || route === "POST /demo/wait") {
      await demoWait(req, res, url.searchParams);
    } else if (route === "GET /demo/stream") {
      await demoStream(req, res, url.searchParams);
    } else if (url.pathname === "/demo/echo") {
      demoEcho(req, res, url, body);
    } else if (route === "GET /_counts") {
      showCounts(res, url.searchParams);
    } else if (route === "GET /_health") {
      sendJson(res, 200, { ok: true });
    } else {
      sendJson(res, 404, { error: "not found" });
    }
  } catch (err) {
    // A StaleAttempt lands here too: the gateway discards a stale attempt's answer anyway.
    if (!res.headersSent && !req.socket.destroyed) sendJson(res, 500, { error: String(err) });
  }
});

// Outlive the gateway's idle keep-alive connections (aiohttp drops them after 15 s), so the
// server never closes a connection just as the gateway reuses it for the next attempt.
server.keepAliveTimeout = 65_000;

server.listen(Number(args.port), args.host, () => {
  console.log(`listening on ${server.address().port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
