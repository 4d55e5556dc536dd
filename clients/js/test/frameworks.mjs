// Backends written with each framework adapter: Express, Fastify, Hono, and a Next.js-style
// route handler through the Web adapter. All serve the same two scenarios under
// /<framework>/steps and /<framework>/sleep, count step work per run (backends.mjs), and
// have an error handler of their own that records what reached it.

import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";

import { durableErrorHandler, durableMiddleware } from "../dist/express.js";
import { durablePlugin } from "../dist/fastify.js";
import { durableMiddleware as honoDurable, durableOnError } from "../dist/hono.js";
import { durableHandler } from "../dist/web.js";
import { counted } from "./backends.mjs";
import { fetchListener } from "./harness.mjs";

/** framework -> the errors its app's own error handler got. */
export const appErrors = { express: [], fastify: [], hono: [], next: [] };

/** step-1, step-2, step-3; step-2's work throws on attempt 1 when `failAt` is 2. */
async function steps(ctx, failAt) {
  const results = [];
  for (let i = 1; i <= 3; i++) {
    const stepId = `step-${i}`;
    const work = counted(ctx, stepId, () => {
      if (i === failAt && ctx.attempt === 1) throw new Error(`${stepId} failed on attempt ${ctx.attempt}`);
      return { step: i, attempt: ctx.attempt };
    });
    results.push(await ctx.step(stepId, work));
  }
  return { run_id: ctx.runId, attempt: ctx.attempt, results };
}

/** step-1, a durable sleep `nap` (Suspend until it is over), step-2. */
async function sleep(ctx, ms) {
  const results = [await ctx.step("step-1", counted(ctx, "step-1", () => ({ step: 1, attempt: ctx.attempt })))];
  await ctx.sleep("nap", ms);
  results.push(await ctx.step("step-2", counted(ctx, "step-2", () => ({ step: 2, attempt: ctx.attempt }))));
  return { run_id: ctx.runId, attempt: ctx.attempt, results };
}

const number = (value, fallback) => (value === undefined || value === null ? fallback : Number(value));

/** Express 5: its rejected promises reach the error handlers. */
export function expressApp() {
  const app = express();
  app.use(durableMiddleware());
  app.post("/express/steps", async (req, res) => {
    res.json(await steps(req.durable, number(req.query.fail_at, 0)));
  });
  app.post("/express/sleep", async (req, res) => {
    res.json(await sleep(req.durable, number(req.query.ms, 500)));
  });
  app.use(durableErrorHandler());
  app.use((err, _req, res, _next) => {
    appErrors.express.push(err);
    res.status(500).json({ error: err.message });
  });
  return app;
}

/** Fastify: the app's error handler is set first; the plugin leaves it in place. */
export async function fastifyApp() {
  const app = Fastify({ logger: false });
  app.setErrorHandler((err, _request, reply) => {
    appErrors.fastify.push(err);
    reply.code(500).send({ error: err.message });
  });
  await app.register(durablePlugin);
  // Callback style: a sync handler that sends later must be left sync (Fastify would send
  // an empty body for an async one's undefined); its error goes to reply.send, as is usual.
  app.post("/fastify/steps", (request, reply) => {
    steps(request.durable, number(request.query.fail_at, 0)).then(
      (body) => reply.send(body),
      (err) => reply.send(err),
    );
  });
  app.post("/fastify/sleep", async (request) => sleep(request.durable, number(request.query.ms, 500)));
  return app;
}

/** Hono: the middleware and an onError that never sees a Suspend. */
export function honoApp() {
  const app = new Hono();
  app.use("/hono/*", honoDurable());
  app.onError(
    durableOnError((err, c) => {
      appErrors.hono.push(err);
      return c.json({ error: err.message }, 500);
    }),
  );
  app.post("/hono/steps", async (c) => c.json(await steps(c.var.durable, number(c.req.query("fail_at"), 0))));
  app.post("/hono/sleep", async (c) => c.json(await sleep(c.var.durable, number(c.req.query("ms"), 500))));
  return app;
}

/**
 * A Next.js app router route handler, app/next/[scenario]/route.js, written as one is:
 * `export async function POST(request, context)` with Next 15's promised params.
 */
export const POST = durableHandler(async (request, ctx, context) => {
  const { scenario } = await context.params;
  const query = new URL(request.url).searchParams;
  if (scenario === "steps") return Response.json(await steps(ctx, number(query.get("fail_at"), 0)));
  if (scenario === "sleep") return Response.json(await sleep(ctx, number(query.get("ms"), 500)));
  return Response.json({ error: "not found" }, { status: 404 });
});

/** What Next.js does with the module above: match the route, call POST, answer a throw with 500. */
export const nextListener = fetchListener(async (request) => {
  const match = /^\/next\/([^/]+)$/.exec(new URL(request.url).pathname);
  if (!match || request.method !== "POST") return new Response(null, { status: 404 });
  try {
    return await POST(request, { params: Promise.resolve({ scenario: match[1] }) });
  } catch (err) {
    appErrors.next.push(err);
    return Response.json({ error: err.message }, { status: 500 });
  }
});
