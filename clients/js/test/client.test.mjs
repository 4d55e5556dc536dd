// The pure parts and the checks made before any sidecar call, without a gateway:
// the Durable-Steps codec and step paths (SPEC.md's worked examples), header parsing,
// the response helpers, argument checks, and the core loading without Node's Buffer.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

import {
  decodeSteps,
  durable,
  encodeSteps,
  noRetry,
  parseHeaders,
  retryAfter,
  SidecarError,
  StaleAttempt,
  StepProtocolError,
  stepPath,
  Suspend,
  suspendBody,
} from "../dist/index.js";

const DURABLE = {
  "Durable-Run-Id": "run1",
  "Durable-Attempt": "2",
  "Durable-Sidecar": "http://127.0.0.1:9/v1/runs/run1/",
  "Durable-Token": "tok",
};

test("Durable-Steps decodes SPEC.md's examples, padded or not", () => {
  assert.deepEqual(decodeSteps("eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ"), { quote: { total: 42 } });
  assert.deepEqual(decodeSteps(" eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ== "), { quote: { total: 42 } });
  assert.deepEqual(decodeSteps("eyJub3RlIjoiYT4_In0"), { note: "a>?" });
  assert.deepEqual(decodeSteps(undefined), {});
  assert.equal(decodeSteps("fetch"), null);
  const steps = { "é/ü": ["ünïcode", 1.5, null], "a:1": { deep: true } };
  assert.deepEqual(decodeSteps(encodeSteps(steps)), steps);
  for (const bad of ["eyJub3RlIjoiYT4/In0", "W10", "!!!", "e"]) {
    assert.throws(() => decodeSteps(bad), /Durable-Steps/, bad);
  }
});

test("a step id is one percent-encoded path segment", () => {
  assert.equal(stepPath("fetch page:1/2 é"), "fetch%20page%3A1%2F2%20%C3%A9");
  assert.equal(stepPath("a!'()*~._-"), "a%21%27%28%29%2A~._-");
});

test("headers are read from Headers, Node's req.headers or a record, any case", () => {
  const expected = {
    runId: "run1",
    attempt: 2,
    sidecar: "http://127.0.0.1:9/v1/runs/run1",
    token: "tok",
    steps: { quote: { total: 42 } },
  };
  const record = { ...DURABLE, "Durable-Steps": "eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ" };
  assert.deepEqual(parseHeaders(record), expected);
  assert.deepEqual(parseHeaders(new Headers(record)), expected);
  const lower = Object.fromEntries(Object.entries(record).map(([k, v]) => [k.toLowerCase(), [v]]));
  assert.deepEqual(parseHeaders(lower), expected);
  assert.equal(parseHeaders({ host: "x" }), null);
  assert.throws(() => parseHeaders({ "durable-run-id": "r" }), StepProtocolError);
  assert.throws(() => parseHeaders({ ...DURABLE, "Durable-Attempt": "0" }), /Durable-Attempt/);
  // A mangled Durable-Steps costs a GET of the steps, not the run.
  const warn = console.warn;
  console.warn = () => {};
  try {
    assert.equal(parseHeaders({ ...DURABLE, "Durable-Steps": "%%%" }).steps, null);
  } finally {
    console.warn = warn;
  }
});

test("outside the gateway steps run, sleeps sleep and waits are refused", async () => {
  const ctx = durable({});
  assert.equal(ctx.durable, false);
  assert.equal(ctx.attempt, 1);
  assert.equal(await ctx.step("a", () => 1), 1);
  assert.equal(await ctx.step("a", async () => undefined), undefined);
  await ctx.sleep("nap", 1);
  await assert.rejects(ctx.waitForEvent("w", { event: "e" }), StepProtocolError);
  await assert.rejects(ctx.step("big", () => 10n), /not JSON-serialisable/);
});

test("bad arguments are refused before any sidecar call", async () => {
  const calls = [];
  const ctx = durable(DURABLE, { fetch: async (url) => (calls.push(url), new Response("{}")) });
  const refused = [
    () => ctx.sleep("s", -1),
    () => ctx.sleep("s", Number.NaN),
    () => ctx.sleep("s", "5m"),
    () => ctx.sleep("s", 11 * 365 * 86400 * 1000),
    () => ctx.sleep("s", { until: "tomorrow" }),
    () => ctx.sleep("s", { until: "2025-01-01T00:00:00" }),
    () => ctx.waitForEvent("w", { event: "" }),
    () => ctx.waitForEvent("w", { event: "e", timeout: "forever" }),
    () => ctx.waitForEvent("w", { event: "e", timeout: -5 }),
    () => ctx.waitForEvent("w", { event: "e", match: { "data..id": 1 } }),
    () => ctx.waitForEvent("w", { event: "e", match: { "data.id": "x".repeat(5000) } }),
    () => ctx.waitForEvent("w", { event: "e", match: Object.fromEntries([...Array(33).keys()].map((i) => [`k${i}`, i])) }),
    () => ctx.step("", () => 1),
    () => ctx.step("x".repeat(257), () => 1),
    () => ctx.step("nul\u0000", () => 1),
  ];
  for (const call of refused) await assert.rejects(call(), (err) => err instanceof TypeError || err instanceof RangeError, String(call));
  assert.deepEqual(calls, []);
});

test("sleeps and waits send what the sidecar expects, and a 202 is a Suspend", async () => {
  const calls = [];
  const answers = [
    [202, { done: false, wake_at: "2030-01-01T00:00:00.000Z" }],
    [202, { event: null, pending: true, timeout_at: null }],
  ];
  const fetch = async (url, init) => {
    calls.push([url, init.method, JSON.parse(init.body), init.headers.authorization]);
    const [status, body] = answers.shift();
    return new Response(JSON.stringify(body), { status });
  };
  const ctx = durable(DURABLE, { fetch });
  const slept = await ctx.sleep("nap", 1500).catch((err) => err);
  assert.ok(slept instanceof Suspend);
  assert.deepEqual(suspendBody(slept), {
    suspended: true,
    kind: "sleep",
    wake_at: "2030-01-01T00:00:00.000Z",
    step_id: "nap",
  });
  const waited = await ctx
    .waitForEvent("nap", { event: "order.paid", match: { "data.id": "7" }, timeout: 90_000, lookback: "10m" })
    .catch((err) => err);
  assert.ok(waited instanceof Suspend);
  assert.equal(waited.timeoutAt, null);
  assert.deepEqual(calls, [
    ["http://127.0.0.1:9/v1/runs/run1/steps/nap/sleep", "POST", { seconds: 1.5 }, "Bearer tok"],
    [
      "http://127.0.0.1:9/v1/runs/run1/steps/nap%3A1/wait",
      "POST",
      { event: "order.paid", match: { "data.id": "7" }, timeout: 90, lookback: "10m" },
      "Bearer tok",
    ],
  ]);
});

test("noRetry and retryAfter give the response headers the gateway reads", () => {
  assert.deepEqual(noRetry(), { headers: { "Durable-Retry": "no" } });
  assert.deepEqual(noRetry({ status: 422, headers: { "content-type": "text/plain" } }), {
    status: 422,
    headers: { "content-type": "text/plain", "Durable-Retry": "no" },
  });
  assert.deepEqual(retryAfter(1.2, { status: 503, headers: new Headers({ "x-a": "b" }) }), {
    status: 503,
    headers: { "x-a": "b", "Retry-After": "2" },
  });
  assert.equal(retryAfter(new Date(0)).headers["Retry-After"], "Thu, 01 Jan 1970 00:00:00 GMT");
  assert.throws(() => retryAfter(-1), RangeError);
  const response = new Response("x", noRetry({ status: 500 }));
  assert.equal(response.headers.get("durable-retry"), "no");
});

test("the core, the Web and the Hono adapters load and decode without Node's Buffer", () => {
  const script = `
    delete globalThis.Buffer;
    const { decodeSteps, durable } = await import("./dist/index.js");
    await import("./dist/web.js");
    await import("./dist/hono.js");
    const steps = decodeSteps("eyJub3RlIjoiYT4_In0");
    if (steps.note !== "a>?") throw new Error("decoded " + JSON.stringify(steps));
    if (durable({}).durable) throw new Error("durable without headers");
    console.log("ok");
  `;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
    cwd: new URL("..", import.meta.url),
    encoding: "utf8",
  });
  assert.equal(out.trim(), "ok");
});

/** A sidecar answer for the adapters' tests: every call is told to suspend. */
const suspending = async () =>
  new Response(JSON.stringify({ done: false, wake_at: "2030-01-01T00:00:00.000Z" }), { status: 202 });

test("the node:http adapter answers a Suspend with the 202 suspend response, other errors with 500", async () => {
  const { durableListener } = await import("../dist/node.js");
  const http = await import("node:http");
  const listener = durableListener(
    async (ctx, req, res) => {
      if (req.url === "/boom") throw new Error("boom");
      await ctx.sleep("nap", 60_000);
      res.writeHead(200).end("not suspended");
    },
    { fetch: suspending, onError: (err, req, res) => res.writeHead(500).end(String(err.message)) },
  );
  const server = http.createServer(listener);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const res = await fetch(`${base}/`, { headers: DURABLE });
    assert.equal(res.status, 202);
    assert.deepEqual(await res.json(), {
      suspended: true,
      kind: "sleep",
      wake_at: "2030-01-01T00:00:00.000Z",
      step_id: "nap",
    });
    const boom = await fetch(`${base}/boom`);
    assert.equal(boom.status, 500);
    assert.equal(await boom.text(), "boom");
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

test("the Web adapter answers a Suspend with the 202 suspend response and passes extra arguments on", async () => {
  const { durableHandler } = await import("../dist/web.js");
  const seen = [];
  const handler = durableHandler(
    async (request, ctx, routeContext) => {
      seen.push(routeContext);
      if (request.url.endsWith("/boom")) throw new Error("boom");
      await ctx.waitForEvent("paid", { event: "order.paid" });
      return new Response("not suspended");
    },
    { fetch: suspending },
  );
  const res = await handler(new Request("http://x/", { headers: DURABLE }), { params: { id: "1" } });
  assert.equal(res.status, 202);
  assert.deepEqual(await res.json(), { suspended: true, kind: "wait", wake_at: null, step_id: "paid" });
  await assert.rejects(handler(new Request("http://x/boom"), {}), /boom/);
  assert.deepEqual(seen, [{ params: { id: "1" } }, {}]);
});

test("sidecar answers: one GET for `fetch`, first write wins, stale attempts and timeouts throw", async () => {
  const calls = [];
  const problem = (slug) => JSON.stringify({ type: `https://durable-gateway.dev/problems/${slug}`, status: 409 });
  const fetch = async (url, init) => {
    const path = new URL(url).pathname.replace("/v1/runs/run1", "");
    calls.push(`${init.method} ${path}`);
    if (path === "/steps") return Response.json({ steps: { done: { output: "stored" } } });
    if (path === "/steps/raced" && init.method === "PUT") return new Response(problem("step-conflict"), { status: 409 });
    if (path === "/steps/raced") return Response.json({ output: "theirs" });
    if (path === "/steps/late") return new Response(problem("stale-attempt"), { status: 409 });
    if (path === "/steps/slow") {
      // Never answers; the held timer stands for the open socket that keeps a real call alive.
      const hold = setTimeout(() => {}, 10_000);
      return new Promise((_, reject) =>
        init.signal.addEventListener("abort", () => (clearTimeout(hold), reject(init.signal.reason))),
      );
    }
    return new Response("{}", { status: 201 });
  };
  const ctx = durable({ ...DURABLE, "Durable-Steps": "fetch" }, { fetch, timeoutMs: 50 });
  const [done, fresh] = await Promise.all([ctx.step("done", () => "again"), ctx.step("fresh", () => "new")]);
  assert.deepEqual([done, fresh], ["stored", "new"]);
  assert.equal(await ctx.step("raced", () => "mine"), "theirs");
  await assert.rejects(ctx.step("late", () => 1), StaleAttempt);
  await assert.rejects(ctx.step("slow", () => 1), (err) => err instanceof SidecarError && err.status === null && /within 50 ms/.test(err.message));
  assert.deepEqual(calls, [
    "GET /steps",
    "PUT /steps/fresh",
    "PUT /steps/raced",
    "GET /steps/raced",
    "PUT /steps/late",
    "PUT /steps/slow",
  ]);
});
