// Example backend in Node.js 20, standard library only: the step protocol with raw calls.
//
// It implements step_protocol/SPEC.md (protocol version 1) without any SDK, so it
// doubles as documentation for writing a backend in a language we ship no client for.
// It never keeps state beyond its in-process step counters.
//
//   node examples/node_backend.mjs --port 3001 [--host 127.0.0.1] [--steps-sync]
//
// Endpoints and failure knobs are those of examples/backend.py:
//   GET|POST /demo/steps?n=3[&fail_at=K&fail_times=F&mode=500|503|drop|hang|400|noretry
//                          &retry_after=S&delay_ms=D]
//   GET /demo/stream?chunks=5&interval_ms=100
//   *   /demo/echo
//   GET /_counts[?run_id=]    GET /_health

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
 * Run `fn` as the step `baseId`, or hand back its output if an earlier attempt finished it.
 * Repeated ids in one attempt become id, id:1, id:2, ... (SPEC.md §4, "Repeated ids").
 */
async function step(ctx, baseId, fn, { sync = false } = {}) {
  if (ctx === null) return await fn(); // not behind the gateway: just run it

  const n = ctx.uses.get(baseId) ?? 0;
  ctx.uses.set(baseId, n + 1);
  const stepId = n === 0 ? baseId : `${baseId}:${n}`;

  // Durable-Steps said `fetch`: one GET for all completed steps, on first need.
  if (ctx.steps === null) {
    const { status, json } = await sidecar(ctx, "GET", "/steps");
    if (status !== 200) throw new Error(`GET steps answered ${status}`);
    ctx.steps = Object.fromEntries(
      Object.entries(json.steps).map(([id, step]) => [id, step.output]),
    );
  }
  if (Object.hasOwn(ctx.steps, stepId)) return ctx.steps[stepId]; // memoized: skip the work

  const path = `/steps/${stepPath(stepId)}`;
  let output;
  try {
    output = await fn();
  } catch (err) {
    // Record the failed try for tracing; best effort, never masks the real error.
    await sidecar(ctx, "PUT", path, { error: { message: String(err?.message ?? err) } }).catch(
      () => {},
    );
    throw err;
  }

  // `?durable=sync`: answered only once the gateway has committed the step.
  const { status, json } = await sidecar(ctx, "PUT", sync ? `${path}?durable=sync` : path, {
    output,
  });
  if (status === 200 || status === 201) return output; // recorded (201) or already identical (200)
  if (status === 409 && problemSlug(json) === "stale-attempt") {
    throw new StaleAttempt("a newer attempt of this run has started");
  }
  if (status === 409) {
    // step-conflict: another attempt recorded a different output first; first write wins.
    const stored = await sidecar(ctx, "GET", path);
    if (stored.status !== 200) throw new Error(`GET step answered ${stored.status}`);
    return stored.json.output;
  }
  throw new Error(`sidecar answered ${status}: ${json?.detail ?? ""}`);
}

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

async function demoSteps(req, res, query) {
  let n, failAt, failTimes, retryAfter, delayMs, mode;
  try {
    n = intParam(query, "n", 3);
    failAt = intParam(query, "fail_at", 0);
    failTimes = intParam(query, "fail_times", 1);
    retryAfter = intParam(query, "retry_after", 1);
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
    const result = await step(
      ctx,
      stepId,
      () => {
        runCounts.set(stepId, (runCounts.get(stepId) ?? 0) + 1);
        return { step: i, value: `computed on attempt ${attempt}` };
      },
      { sync: args["steps-sync"] },
    );
    results.push(result);
  }
  if (delayMs) await sleep(delayMs);
  sendJson(res, 200, { run_id: ctx?.runId ?? null, attempt, results });
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
