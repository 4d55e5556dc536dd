// The framework adapters against a real gateway process: for Express, Fastify, Hono and a
// Next.js-style route handler, a run that fails at step 2 resumes there, and a durable
// sleep is answered 202 and resumed. Then each adapter's edges without a gateway.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";

import { Suspend } from "../dist/index.js";
import { durableErrorHandler, durableMiddleware } from "../dist/express.js";
import { durablePlugin } from "../dist/fastify.js";
import { durableMiddleware as honoDurable, durableOnError } from "../dist/hono.js";
import { countsOf } from "./backends.mjs";
import { appErrors, expressApp, fastifyApp, honoApp, nextListener } from "./frameworks.mjs";
import { fetchListener, request, routesTo, serve, startGateway } from "./harness.mjs";

const FRAMEWORKS = ["express", "fastify", "hono", "next"];
const BOUND = { timeout: 45_000 };

let gateway;
const servers = [];

before(async () => {
  const fastify = await fastifyApp();
  await fastify.ready();
  const upstreams = {
    express: await serve(expressApp()),
    fastify: await serve((req, res) => fastify.routing(req, res)),
    hono: await serve(fetchListener(honoApp().fetch)),
    next: await serve(nextListener),
  };
  servers.push(...Object.values(upstreams), { close: () => fastify.close() });
  gateway = await startGateway(routesTo(Object.fromEntries(FRAMEWORKS.map((name) => [name, upstreams[name].url]))));
});

after(async () => {
  await gateway?.stop();
  for (const server of servers) await server.close();
});

describe("framework adapters through the gateway", BOUND, () => {
  for (const name of FRAMEWORKS) {
    test(`${name}: a run that fails at step 2 resumes there without running step 1 again`, async () => {
      const seen = appErrors[name].length;
      const { status, body } = await request(`${gateway.ingress}/${name}/steps?fail_at=2`);
      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(body.attempt, 2);
      assert.deepEqual(body.results, [
        { step: 1, attempt: 1 },
        { step: 2, attempt: 2 },
        { step: 3, attempt: 2 },
      ]);
      assert.deepEqual(countsOf(body.run_id), { "step-1": 1, "step-2": 2, "step-3": 1 });
      // The step's error went on to the app's own error handler, which answered the 500.
      assert.deepEqual(
        appErrors[name].slice(seen).map((err) => err.message),
        ["step-2 failed on attempt 1"],
      );
      const detail = await gateway.finished(body.run_id);
      assert.deepEqual(
        detail.attempts.map((a) => a.status),
        [500, 200],
      );
    });

    test(`${name}: a durable sleep is answered 202, then resumed after the nap`, async () => {
      const seen = appErrors[name].length;
      const { status, body } = await request(`${gateway.ingress}/${name}/sleep?ms=500`);
      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(body.attempt, 2);
      assert.deepEqual(countsOf(body.run_id), { "step-1": 1, "step-2": 1 });
      assert.deepEqual(body.results, [
        { step: 1, attempt: 1 },
        { step: 2, attempt: 2 },
      ]);
      const detail = await gateway.finished(body.run_id);
      assert.deepEqual(
        detail.attempts.map((a) => a.status),
        [202, 200],
      );
      assert.equal(detail.attempts[0].outcome, "suspended");
      assert.ok(detail.steps.find((s) => s.step_id === "nap")?.completed, JSON.stringify(detail.steps));
      assert.equal(appErrors[name].length, seen, "a Suspend reached the app's error handler");
    });
  }
});

const DURABLE = {
  "Durable-Run-Id": "run1",
  "Durable-Attempt": "1",
  "Durable-Sidecar": "http://127.0.0.1:9/v1/runs/run1",
  "Durable-Token": "tok",
};
const SUSPENDED = { suspended: true, kind: "sleep", wake_at: "2030-01-01T00:00:00.000Z", step_id: "nap" };
/** A sidecar that tells every sleep to suspend. */
const suspending = async () =>
  new Response(JSON.stringify({ done: false, wake_at: SUSPENDED.wake_at }), { status: 202 });

describe("framework adapters, their edges", BOUND, () => {
  test("express: incomplete Durable-* headers go to next(err); a Suspend after headers went out ends the response", async () => {
    const errors = [];
    const app = express();
    app.use(durableMiddleware({ fetch: suspending }));
    app.get("/late", async (req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("started ");
      await req.durable.sleep("nap", 60_000);
    });
    app.get("/", async (req, res) => res.json({ durable: req.durable.durable }));
    app.use(durableErrorHandler());
    app.use((err, _req, res, _next) => (errors.push(err), res.status(500).json({ error: err.name })));
    const server = await serve(app);
    try {
      const bad = await request(`${server.url}/`, { method: "GET", headers: { "Durable-Run-Id": "r" } });
      assert.deepEqual([bad.status, bad.body], [500, { error: "StepProtocolError" }]);
      const plain = await request(`${server.url}/`, { method: "GET" });
      assert.deepEqual(plain.body, { durable: false });
      const late = await request(`${server.url}/late`, { method: "GET", headers: DURABLE });
      assert.deepEqual([late.status, late.body], [200, "started "]);
      assert.deepEqual(
        errors.map((e) => e.name),
        ["StepProtocolError"],
      );
    } finally {
      await server.close();
    }
  });

  test("fastify: a thrown or rejected Suspend is a 202; a route added before the plugin ran is warned about", async () => {
    const warnings = [];
    const errors = [];
    const logger = { level: "warn", stream: { write: (line) => warnings.push(JSON.parse(line).msg) } };
    const app = Fastify({ logger });
    app.setErrorHandler((err, _request, reply) => (errors.push(err), reply.code(500).send({ error: err.name })));
    app.register(durablePlugin, { fetch: suspending });
    app.get("/early", async (request) => ({ durable: request.durable.durable })); // before the plugin ran
    await app.after();
    app.get("/sleep", async (request) => request.durable.sleep("nap", 60_000));
    app.get("/sync", () => {
      throw new Suspend("sleep", "nap", null);
    });
    app.get("/boom", async () => {
      throw new Error("boom");
    });
    await app.ready();
    try {
      const slept = await app.inject({ method: "GET", url: "/sleep", headers: DURABLE });
      assert.equal(slept.statusCode, 202);
      assert.match(slept.headers["content-type"], /^application\/json/);
      assert.deepEqual(slept.json(), SUSPENDED);
      const sync = await app.inject({ method: "GET", url: "/sync", headers: DURABLE });
      assert.deepEqual([sync.statusCode, sync.json()], [202, { suspended: true, kind: "sleep", wake_at: null, step_id: "nap" }]);
      const boom = await app.inject({ method: "GET", url: "/boom" });
      assert.deepEqual([boom.statusCode, boom.json()], [500, { error: "Error" }]);
      const bad = await app.inject({ method: "GET", url: "/sleep", headers: { "Durable-Token": "t" } });
      assert.deepEqual([bad.statusCode, bad.json()], [500, { error: "StepProtocolError" }]);
      assert.deepEqual(
        errors.map((e) => e.name),
        ["Error", "StepProtocolError"],
      );
      assert.equal(warnings.length, 0);
      for (let i = 0; i < 2; i++) await app.inject({ method: "GET", url: "/early" });
      assert.equal(warnings.length, 1, "warned once per route");
      assert.match(warnings[0], /\/early was added before the plugin ran/);
    } finally {
      await app.close();
    }
  });

  test("hono: the middleware answers a Suspend even when onError is the app's own", async () => {
    const seen = [];
    const app = new Hono();
    app.use(honoDurable({ fetch: suspending }));
    app.onError((err, c) => (seen.push(err.name), c.text("app error", 500)));
    app.get("/sleep", async (c) => c.json(await c.var.durable.sleep("nap", 60_000)));
    app.get("/boom", () => {
      throw new Error("boom");
    });
    const slept = await app.request("/sleep", { headers: DURABLE });
    assert.equal(slept.status, 202);
    assert.deepEqual(await slept.json(), SUSPENDED);
    const boom = await app.request("/boom");
    assert.deepEqual([boom.status, await boom.text()], [500, "app error"]);
    assert.deepEqual(seen, ["Suspend", "Error"]);

    // Wrapped in durableOnError, the app's handler sees only the other errors.
    const quiet = [];
    const wrapped = new Hono();
    wrapped.use(honoDurable({ fetch: suspending }));
    wrapped.onError(durableOnError((err, c) => (quiet.push(err.name), c.text("app error", 500))));
    wrapped.get("/sleep", async (c) => c.json(await c.var.durable.sleep("nap", 60_000)));
    wrapped.get("/bad", (c) => c.text("unreachable"));
    assert.equal((await wrapped.request("/sleep", { headers: DURABLE })).status, 202);
    const bad = await wrapped.request("/bad", { headers: { "Durable-Sidecar": "http://x" } });
    assert.equal(bad.status, 500);
    assert.deepEqual(quiet, ["StepProtocolError"]);
  });
});
