// A backend served by Bun (`bun runtime_backend.mjs`) or Deno (`deno run
// --allow-net=127.0.0.1 runtime_backend.mjs`) with their own servers, Bun.serve and
// Deno.serve, through the built Web adapter: no Node API, no bridge. It binds a free
// loopback port and prints `{"port", "runtime"}` as one JSON line on stdout.
//
//   POST …/steps?fail_at=2  step-1..3; step-2's work throws on attempt 1
//   POST …/sleep?ms=500     step-1, a durable sleep `nap`, step-2
//   GET  …/counts?run_id=R  {runtime, counts: {step id: executions}, errors: [messages]}
//
// Paths match on their last segment, so the gateway can route any prefix here.

import { durableHandler } from "../dist/web.js";

const runtime = globalThis.Bun
  ? `bun ${globalThis.Bun.version}`
  : globalThis.Deno
    ? `deno ${globalThis.Deno.version.deno}`
    : null;
if (runtime === null) throw new Error("runtime_backend.mjs runs under Bun or Deno");

/** At most this many runs are counted, so a long-lived process stays bounded. */
const MAX_RUNS = 1000;
/** run id -> step id -> executions of the step's work. */
const counts = new Map();
/** run id -> messages of the errors that reached the app's own error handling. */
const errors = new Map();

function remember(map, runId, fresh) {
  if (!map.has(runId)) {
    if (map.size >= MAX_RUNS) map.delete(map.keys().next().value);
    map.set(runId, fresh());
  }
  return map.get(runId);
}

/** `work`, counting its executions for this run. */
function counted(ctx, stepId, work) {
  return () => {
    const run = remember(counts, ctx.runId ?? "local", () => new Map());
    run.set(stepId, (run.get(stepId) ?? 0) + 1);
    return work();
  };
}

function numberParam(url, name, fallback) {
  const raw = url.searchParams.get(name);
  const value = raw === null ? fallback : Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a non-negative number`);
  return value;
}

const durableRoutes = durableHandler(async (request, ctx) => {
  const url = new URL(request.url);
  const results = [];
  switch (url.pathname.split("/").pop()) {
    case "steps": {
      const failAt = numberParam(url, "fail_at", 0);
      for (let i = 1; i <= 3; i++) {
        const stepId = `step-${i}`;
        const work = counted(ctx, stepId, () => {
          if (i === failAt && ctx.attempt === 1) throw new Error(`${stepId} failed on attempt ${ctx.attempt}`);
          return { step: i, attempt: ctx.attempt };
        });
        results.push(await ctx.step(stepId, work));
      }
      break;
    }
    case "sleep": {
      const ms = numberParam(url, "ms", 500);
      results.push(await ctx.step("step-1", counted(ctx, "step-1", () => ({ step: 1, attempt: ctx.attempt }))));
      await ctx.sleep("nap", ms); // Suspend until the nap is over: the adapter answers 202
      results.push(await ctx.step("step-2", counted(ctx, "step-2", () => ({ step: 2, attempt: ctx.attempt }))));
      break;
    }
    default:
      return Response.json({ error: "not found" }, { status: 404 });
  }
  return Response.json({ runtime, run_id: ctx.runId, attempt: ctx.attempt, results });
});

/** The app's own error handling around the adapter: records what reached it, answers 500. */
async function handler(request) {
  const url = new URL(request.url);
  if (request.method === "GET" && url.pathname.endsWith("/counts")) {
    const runId = url.searchParams.get("run_id") ?? "local";
    return Response.json({
      runtime,
      counts: Object.fromEntries(counts.get(runId) ?? []),
      errors: errors.get(runId) ?? [],
    });
  }
  try {
    return await durableRoutes(request);
  } catch (err) {
    const runId = request.headers.get("durable-run-id") ?? "local";
    remember(errors, runId, () => []).push(err instanceof Error ? err.message : String(err));
    return Response.json({ error: err instanceof Error ? err.message : String(err) }, { status: 500 });
  }
}

const announce = (port) => console.log(JSON.stringify({ port, runtime }));

if (globalThis.Bun) {
  // idleTimeout (s) outlives the gateway's idle keep-alive connections, so a reused one is
  // not closed under it.
  const server = globalThis.Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 65, fetch: handler });
  announce(server.port);
} else {
  globalThis.Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: ({ port }) => announce(port) }, handler);
}
