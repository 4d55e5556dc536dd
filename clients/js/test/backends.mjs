// The backends under test: handlers written with the client, one behind the node:http
// adapter (/js/*), one behind the Web adapter (/web/*, served through a small node:http
// bridge, the way a Web-standard runtime would call it). Each counts how often each step's
// work ran, per run, so a test sees what resuming skipped.

import { noRetry, StepProtocolError } from "../dist/index.js";
import { durableListener } from "../dist/node.js";
import { durableHandler } from "../dist/web.js";
import { fetchListener } from "./harness.mjs";

/** run id ("local" outside the gateway) -> step id -> executions. */
export const counts = new Map();
/** run id -> the Durable-Steps value each attempt got, in order. */
export const seenSteps = new Map();

export function counted(ctx, stepId, work) {
  return () => {
    const key = ctx.runId ?? "local";
    if (!counts.has(key)) counts.set(key, new Map());
    const run = counts.get(key);
    run.set(stepId, (run.get(stepId) ?? 0) + 1);
    return work();
  };
}

export function countsOf(runId) {
  return Object.fromEntries(counts.get(runId) ?? new Map());
}

function sendJson(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(data);
}

/** /js/steps?n=3&fail_at=2&mode=500|noretry|raise: steps step-1..n; attempt 1 fails at fail_at. */
async function steps(ctx, res, query) {
  const n = Number(query.get("n") ?? 3);
  const failAt = Number(query.get("fail_at") ?? 0);
  const mode = query.get("mode") ?? "500";
  const results = [];
  for (let i = 1; i <= n; i++) {
    const stepId = `step-${i}`;
    const failing = i === failAt && ctx.attempt === 1;
    if (failing && mode === "500") return sendJson(res, 500, { error: "injected", attempt: ctx.attempt });
    if (failing && mode === "noretry") {
      const init = noRetry({ status: 500 });
      return sendJson(res, init.status, { error: "final", attempt: ctx.attempt }, init.headers);
    }
    const work = counted(ctx, stepId, () => {
      if (failing && mode === "raise") throw new Error(`${stepId} failed on attempt ${ctx.attempt}`);
      return { step: i, attempt: ctx.attempt };
    });
    results.push(await ctx.step(stepId, work)); // a thrown error reaches the adapter: 500
  }
  sendJson(res, 200, { run_id: ctx.runId, attempt: ctx.attempt, results });
}

/** /js/loop?n=3: the same step id n times in a loop; attempt 1 fails after the loop. */
async function loop(ctx, res, query) {
  const n = Number(query.get("n") ?? 3);
  const results = [];
  for (let i = 0; i < n; i++) {
    results.push(await ctx.step("item", counted(ctx, `item#${i}`, () => ({ index: i, attempt: ctx.attempt }))));
  }
  if (ctx.attempt === 1) return sendJson(res, 500, { error: "injected after the loop" });
  sendJson(res, 200, { run_id: ctx.runId, attempt: ctx.attempt, results });
}

/** /js/big: a step output too large for Durable-Steps, so attempt 2 must fetch it. */
async function big(ctx, res, req) {
  if (ctx.runId) {
    if (!seenSteps.has(ctx.runId)) seenSteps.set(ctx.runId, []);
    seenSteps.get(ctx.runId).push(req.headers["durable-steps"] ?? null);
  }
  const text = await ctx.step("text", counted(ctx, "text", () => "x".repeat(6000)));
  if (ctx.attempt === 1) return sendJson(res, 500, { error: "injected" });
  sendJson(res, 200, { run_id: ctx.runId, attempt: ctx.attempt, length: text.length });
}

/** /js/sleep?ms=1000: step-1, a durable sleep `nap`, step-2. */
async function sleep(ctx, res, query) {
  const ms = Number(query.get("ms") ?? 1000);
  const results = [await ctx.step("step-1", counted(ctx, "step-1", () => ({ step: 1, attempt: ctx.attempt })))];
  await ctx.sleep("nap", ms); // throws Suspend until the nap is over
  results.push(await ctx.step("step-2", counted(ctx, "step-2", () => ({ step: 2, attempt: ctx.attempt }))));
  sendJson(res, 200, { run_id: ctx.runId, attempt: ctx.attempt, results });
}

export const nodeListener = durableListener(async (ctx, req, res) => {
  const url = new URL(req.url, "http://backend");
  for await (const _ of req); // drain the body: none of these read it
  switch (url.pathname) {
    case "/js/steps":
      return steps(ctx, res, url.searchParams);
    case "/js/loop":
      return loop(ctx, res, url.searchParams);
    case "/js/big":
      return big(ctx, res, req);
    case "/js/sleep":
      return sleep(ctx, res, url.searchParams);
    default:
      return sendJson(res, 404, { error: "not found" });
  }
});

/** /web/wait?order_id=7: step-1, wait `paid` for order.paid of that order, step-2 with it. */
export const webHandler = durableHandler(async (request, ctx) => {
  const url = new URL(request.url);
  if (url.pathname !== "/web/wait") return Response.json({ error: "not found" }, { status: 404 });
  const orderId = url.searchParams.get("order_id") ?? "1";
  const first = await ctx.step("step-1", counted(ctx, "step-1", () => ({ step: 1 })));
  let event;
  try {
    event = await ctx.waitForEvent("paid", {
      event: "order.paid",
      match: { "data.order_id": orderId },
      timeout: "5m",
    });
  } catch (err) {
    if (err instanceof StepProtocolError) return Response.json({ error: err.message }, { status: 501 });
    throw err; // Suspend: the adapter answers it
  }
  const second = await ctx.step("step-2", counted(ctx, "step-2", () => ({ step: 2, paid: event?.data ?? null })));
  return Response.json({ run_id: ctx.runId, attempt: ctx.attempt, event, results: [first, second] });
});

/** The Web handler served over node:http, as a Web-standard runtime would call it. */
export const webBridge = fetchListener(webHandler);
