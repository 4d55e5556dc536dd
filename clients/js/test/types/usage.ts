// Compiled (never run) against the frameworks' own types, the way an app would import
// the package: the adapters must fit where each framework takes a middleware, a plugin
// or an error handler, and `req.durable`, `request.durable`, `c.var.durable` are typed.

import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";

import type { RunContext } from "@durable-gateway/client";
import { durableErrorHandler, durableMiddleware } from "@durable-gateway/client/express";
import { durablePlugin } from "@durable-gateway/client/fastify";
import { durableMiddleware as honoDurable, durableOnError, type DurableVariables } from "@durable-gateway/client/hono";
import { durableHandler } from "@durable-gateway/client/web";

const app = express();
app.use(durableMiddleware({ timeoutMs: 5_000 }));
app.post("/order", async (req, res) => {
  const ctx: RunContext = req.durable;
  const quote = await ctx.step("quote", () => ({ total: 42 }));
  res.json(quote);
});
app.use(durableErrorHandler());

const fastify = Fastify();
await fastify.register(durablePlugin, { timeoutMs: 5_000 });
fastify.post("/order", async (request) => {
  const ctx: RunContext = request.durable;
  return ctx.step("quote", () => ({ total: 42 }));
});

const hono = new Hono();
hono.use(honoDurable({ timeoutMs: 5_000 }));
hono.onError(durableOnError((err, c) => c.json({ error: err.message }, 500)));
hono.post("/order", async (c) => {
  const ctx: RunContext = c.var.durable;
  return c.json(await ctx.step("quote", () => ({ total: 42 })));
});
const typed = new Hono<{ Variables: DurableVariables }>();
typed.use("/api/*", honoDurable());
typed.get("/api/x", (c) => c.text(String(c.get("durable").attempt)));

// Next.js app router: the route context comes after ctx, typed by the handler.
export const POST = durableHandler(async (request: Request, ctx, context: { params: Promise<{ id: string }> }) => {
  const { id } = await context.params;
  return Response.json(await ctx.step(`order-${id}`, () => request.method));
});
