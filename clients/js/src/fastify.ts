/**
 * Adapter for Fastify: a plugin that puts the run context on `request.durable` and
 * answers `Suspend` with the 202 suspend response. It wraps each route's handler rather
 * than setting an error handler, so the app's own error handler stays in charge of every
 * other error (Fastify 5 refuses a second error handler in one scope). Typed by what it
 * touches, so this package needs no Fastify installed.
 */

import { durable, type ContextOptions, type HeadersInput, type RunContext } from "./context.js";
import type {} from "fastify"; // the module augmented below; types only
import { isSuspend, type Suspend } from "./errors.js";
import { SUSPEND_STATUS, suspendBody } from "./responses.js";

declare module "fastify" {
  interface FastifyRequest {
    /** This attempt's run context; set by `durablePlugin` on the routes it covers. */
    durable: RunContext;
  }
}

/** What the plugin touches of Fastify's request. */
export interface FastifyRequestLike {
  headers: HeadersInput;
  durable: RunContext | null;
  readonly routeOptions: { readonly config: object; readonly url?: string | undefined };
  readonly log: { warn(msg: string): unknown };
}

/** What the plugin touches of Fastify's reply. */
export interface FastifyReplyLike {
  readonly sent: boolean;
  code(status: number): FastifyReplyLike;
  type(contentType: string): FastifyReplyLike;
  send(payload?: unknown): FastifyReplyLike;
}

type RouteHandler = (this: unknown, request: never, reply: never) => unknown;

/** What the plugin touches of the options of a route being added. */
export interface FastifyRouteLike {
  handler: RouteHandler;
  config?: object | undefined;
}

/** What the plugin touches of the Fastify instance (one loose addHook: Fastify's overloads fit it). */
export interface FastifyInstanceLike {
  decorateRequest(name: "durable", value: null): unknown;
  addHook(name: "onRequest" | "onRoute", hook: (...args: never[]) => unknown): unknown;
}

type OnRequest = (request: FastifyRequestLike, reply: unknown, done: (err?: Error) => void) => void;
type OnRoute = (route: FastifyRouteLike) => void;

// Marks the config of a route whose handler answers Suspend, so a route added before the
// plugin ran (and so not wrapped) is told apart at its first request.
const WRAPPED = Symbol("durable-gateway.suspend");

/**
 * `await app.register(durablePlugin, {timeoutMs})`, before the routes: every request gets
 * `request.durable`, and a route handler's `Suspend` (thrown, or a rejected promise)
 * becomes the 202 suspend response. Incomplete Durable-* headers fail the request through
 * the app's error handler (a 500 the gateway retries).
 *
 * Routes added before the plugin ran are not wrapped (Fastify calls onRoute hooks as a
 * route is added); their first request logs a warning. Register it without encapsulation,
 * as fastify-plugin would, so it covers the routes of the scope it is registered in.
 */
export function durablePlugin(instance: FastifyInstanceLike, options: ContextOptions, done: (err?: Error) => void): void {
  const contextOptions = pickContextOptions(options);
  const warned = new WeakSet<object>();
  instance.decorateRequest("durable", null);
  instance.addHook("onRoute", ((route) => {
    route.handler = answeringSuspend(route.handler);
    route.config = { ...route.config, [WRAPPED]: true };
  }) satisfies OnRoute);
  instance.addHook("onRequest", ((request, _reply, next) => {
    const { config, url } = request.routeOptions;
    if (url !== undefined && !(WRAPPED in config) && !warned.has(config)) {
      warned.add(config);
      request.log.warn(
        `durablePlugin: route ${url} was added before the plugin ran, so a Suspend there ` +
          "reaches the error handler; `await app.register(durablePlugin)` before adding routes",
      );
    }
    try {
      request.durable = durable(request.headers, contextOptions);
    } catch (err) {
      next(err as Error); // incomplete Durable-* headers: the app's error handler answers
      return;
    }
    next();
  }) satisfies OnRequest);
  done();
}

// What fastify-plugin sets: no encapsulation, so the hooks reach the registering scope.
Object.assign(durablePlugin, {
  [Symbol.for("skip-override")]: true,
  [Symbol.for("fastify.display-name")]: "durable-gateway",
  [Symbol.for("plugin-meta")]: { name: "durable-gateway", fastify: "5.x" },
});

/** Fastify passes its own options (prefix, logLevel…) along with ours: keep only ours. */
function pickContextOptions(options: ContextOptions | undefined): ContextOptions {
  const picked: ContextOptions = {};
  if (options?.timeoutMs !== undefined) picked.timeoutMs = options.timeoutMs;
  if (options?.maxAnswerBytes !== undefined) picked.maxAnswerBytes = options.maxAnswerBytes;
  if (options?.fetch !== undefined) picked.fetch = options.fetch;
  return picked;
}

/**
 * The handler, answering a Suspend it throws or rejects with. Sync stays sync: Fastify
 * reads an async handler's undefined result as "send an empty body", which would break a
 * handler that calls `reply.send` later.
 */
function answeringSuspend(handler: RouteHandler): RouteHandler {
  if (typeof handler !== "function") return handler; // Fastify refuses the route itself
  return function (this: unknown, request: never, reply: never): unknown {
    const answer = (err: unknown): unknown => {
      if (!isSuspend(err)) throw err;
      return sendSuspend(reply as FastifyReplyLike, err);
    };
    let result: unknown;
    try {
      result = handler.call(this, request, reply);
    } catch (err) {
      return answer(err);
    }
    if (result !== null && typeof (result as PromiseLike<unknown>)?.then === "function") {
      return Promise.resolve(result).catch(answer);
    }
    return result;
  };
}

/** Send the 202 suspend response, or leave a reply already sent as it is (the gateway ignores it). */
function sendSuspend(reply: FastifyReplyLike, suspend: Suspend): FastifyReplyLike {
  if (reply.sent) return reply;
  return reply.code(SUSPEND_STATUS).type("application/json").send(JSON.stringify(suspendBody(suspend)));
}
